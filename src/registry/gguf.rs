//! A pure-Rust reader for the header of a GGUF file (no llama.cpp): the facts the registry
//! records about a model (architecture, name, quantization, parameter count, trained context).
//!
//! How it reads: GGUF v2/v3, little-endian, is `"GGUF"`, `version: u32`, `tensor_count: u64`,
//! `kv_count: u64`, then `kv_count` metadata pairs (key string, `type: u32`, value), then
//! `tensor_count` tensor infos (name string, `n_dims: u32`, `n_dims` × `u64` dims, `type: u32`,
//! `offset: u64`). Strings are a `u64` length and that many UTF-8 bytes. Only the header is
//! read; tensor data is never touched, so a multi-gigabyte model is read in milliseconds.
//!
//! Invariants, because the file may be corrupt or hostile:
//! - Every length and count is checked against the bytes left in the file before it is used,
//!   so a huge count is refused at once instead of looping or allocating; a file that ends
//!   early is reported as truncated.
//! - Only the few values kept are allocated (keys up to 65,535 bytes, as GGUF allows, and the
//!   kept strings up to [`MAX_KEPT_STRING`]); everything else, including the vocabulary arrays
//!   of hundreds of thousands of strings, is skipped in place through the `BufReader`.
//! - Nested arrays go at most [`MAX_ARRAY_DEPTH`] deep, so recursion cannot exhaust the stack.
//! - The parameter count is a checked sum of checked products: an overflow is an error.
//!
//! Every error names the file. Reading is blocking I/O; call it off the async runtime.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

/// The facts the registry records about a GGUF model.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufFacts {
    /// `general.architecture`, e.g. `gemma3`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub file_type: Option<u32>,
    /// [`file_type_name`] of `file_type`, or `unknown`.
    pub quantization: String,
    /// The number of weights: the sum over tensors of the product of their dimensions.
    pub parameters: u64,
    /// `{architecture}.context_length`: the context the model was trained with.
    pub context_length: Option<u32>,
    pub tensor_count: u64,
    /// The GGUF format version (2 or 3).
    pub version: u32,
}

/// The longest key GGUF allows.
const MAX_KEY: u64 = 65_535;
/// The longest string value that is kept (`general.architecture`, `general.name`).
const MAX_KEPT_STRING: u64 = 1 << 20;
/// The longest tensor name accepted (ggml's own limit is 64 bytes).
const MAX_TENSOR_NAME: u64 = 65_535;
/// How deep arrays of arrays may nest.
const MAX_ARRAY_DEPTH: u32 = 8;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// At most this many `*.context_length` keys are remembered while looking for the one that
/// matches the architecture (which may come later in the file).
const MAX_CONTEXT_KEYS: usize = 64;

// The smallest possible encodings, used to refuse counts the file cannot hold.
/// A key length, a one-byte key, a type and a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// A name length, `n_dims`, a type and an offset.
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 4 + 8;
/// An element type and a count.
const MIN_ARRAY_BYTES: u64 = 4 + 8;

// GGUF metadata value types.
const T_UINT8: u32 = 0;
const T_INT8: u32 = 1;
const T_UINT16: u32 = 2;
const T_INT16: u32 = 3;
const T_UINT32: u32 = 4;
const T_INT32: u32 = 5;
const T_FLOAT32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_UINT64: u32 = 10;
const T_INT64: u32 = 11;
const T_FLOAT64: u32 = 12;

/// Why the GGUF header of a file could not be read. Every error names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot open the model file: {error}", .path.display())]
    Open { path: PathBuf, error: std::io::Error },
    #[error("{}: cannot read the model file: {error}", .path.display())]
    Stat { path: PathBuf, error: std::io::Error },
    #[error("{}: {problem}", .path.display())]
    Header { path: PathBuf, problem: HeaderError },
}

/// What is wrong with a header. `what` names the part being read, e.g. `metadata entry 3
/// (general.name)` or `tensor info 0`.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("not a GGUF file (it does not start with the GGUF magic)")]
    NotGguf,
    #[error("GGUF version {version} is not supported, only versions 2 and 3{}", endian_hint(*.big_endian))]
    UnsupportedVersion { version: u32, big_endian: bool },
    #[error("truncated: the file ends inside {what} (at byte {pos} of {len})")]
    Truncated { what: String, pos: u64, len: u64 },
    #[error("the header claims {count} {what}, more than the {remaining} bytes left in the file can hold (corrupt?)")]
    CountTooLarge { count: u64, what: String, remaining: u64 },
    #[error("cannot read {what}: {error}")]
    Read { what: String, error: std::io::Error },
    #[error("{what} is too long")]
    TooLong { what: String },
    #[error("{what} is {len} bytes long, more than the {max} allowed")]
    StringTooLong { what: String, len: u64, max: u64 },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: String },
    #[error("{what} has unknown value type {ty}")]
    UnknownValueType { what: String, ty: u32 },
    #[error("{what} has unknown array element type {ty}")]
    UnknownElementType { what: String, ty: u32 },
    #[error("{what} nests arrays more than {MAX_ARRAY_DEPTH} deep")]
    TooDeep { what: String },
    #[error("{what} has value type {ty}, not the type GGUF specifies")]
    WrongType { what: String, ty: u32 },
    #[error("{what}: {value} is not a valid file type")]
    BadFileType { what: String, value: i128 },
    #[error("the file has no general.architecture")]
    NoArchitecture,
    #[error("{architecture}.context_length is {value}, not a valid context length")]
    BadContextLength { architecture: String, value: i128 },
    #[error("{what} has {n_dims} dimensions, more than the {MAX_DIMS} ggml allows")]
    TooManyDims { what: String, n_dims: u32 },
    #[error("{what}: its element count overflows")]
    ElementsOverflow { what: String },
    #[error("the total parameter count overflows")]
    ParametersOverflow,
}

fn endian_hint(big_endian: bool) -> &'static str {
    if big_endian {
        " (a big-endian GGUF file?)"
    } else {
        ""
    }
}

/// Reads the header of the GGUF file at `path`.
pub fn read_facts(path: &Path) -> Result<GgufFacts, GgufError> {
    let file = File::open(path).map_err(|error| GgufError::Open { path: path.to_owned(), error })?;
    let len = file.metadata().map_err(|error| GgufError::Stat { path: path.to_owned(), error })?.len();
    let mut r = Reader { inner: BufReader::new(file), pos: 0, len };
    parse(&mut r).map_err(|problem| GgufError::Header { path: path.to_owned(), problem })
}

/// `general.file_type` as llama.cpp names it.
pub fn file_type_name(ft: u32) -> String {
    let n = match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        30 => "IQ4_XS",
        32 => "BF16",
        _ => return format!("file_type {ft}"),
    };
    n.to_owned()
}

fn parse<R: Read + Seek>(r: &mut Reader<R>) -> Result<GgufFacts, HeaderError> {
    let magic: [u8; 4] = r.array("the GGUF magic")?;
    if &magic != b"GGUF" {
        return Err(HeaderError::NotGguf);
    }
    let version = u32::from_le_bytes(r.array("the GGUF version")?);
    if !(2..=3).contains(&version) {
        let big_endian = (2..=3).contains(&version.swap_bytes());
        return Err(HeaderError::UnsupportedVersion { version, big_endian });
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    // The tensor infos follow the metadata, so both must fit in what is left.
    r.check_count(kv_count, MIN_KV_BYTES, "metadata entries")?;
    r.check_count(tensor_count, MIN_TENSOR_BYTES, "tensors")?;

    let mut architecture = None;
    let mut name = None;
    let mut file_type = None;
    let mut context_lengths: HashMap<String, i128> = HashMap::new();
    for i in 0..kv_count {
        let key = r.string(MAX_KEY, &format!("the key of metadata entry {i}"))?;
        let what = format!("metadata entry {i} ({key})");
        let ty = r.u32(&what)?;
        let keep_string = key == "general.architecture" || key == "general.name";
        let value = r.value(ty, keep_string, 0, &what)?;
        match (key.as_str(), value) {
            ("general.architecture", Value::Str(s)) => architecture = Some(s),
            ("general.name", Value::Str(s)) => name = Some(s),
            ("general.file_type", Value::Int(v)) => {
                file_type = Some(u32::try_from(v).map_err(|_| HeaderError::BadFileType { what, value: v })?)
            }
            (k, Value::Int(v)) if k.ends_with(".context_length") && context_lengths.len() < MAX_CONTEXT_KEYS => {
                context_lengths.insert(key, v);
            }
            ("general.architecture" | "general.name" | "general.file_type", _) => {
                return Err(HeaderError::WrongType { what, ty });
            }
            _ => {}
        }
    }
    let architecture = architecture.ok_or(HeaderError::NoArchitecture)?;
    let context_length = match context_lengths.get(&format!("{architecture}.context_length")) {
        Some(&v) => Some(
            u32::try_from(v)
                .map_err(|_| HeaderError::BadContextLength { architecture: architecture.clone(), value: v })?,
        ),
        None => None,
    };

    let mut parameters: u64 = 0;
    for i in 0..tensor_count {
        let what = format!("tensor info {i}");
        r.skip_string(MAX_TENSOR_NAME, &format!("the name of {what}"))?;
        let n_dims = r.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(HeaderError::TooManyDims { what, n_dims });
        }
        let mut elements: u64 = 1;
        for _ in 0..n_dims {
            let d = r.u64(&what)?;
            elements = elements.checked_mul(d).ok_or_else(|| HeaderError::ElementsOverflow { what: what.clone() })?;
        }
        let _ggml_type = r.u32(&what)?;
        let _offset = r.u64(&what)?;
        parameters = parameters.checked_add(elements).ok_or(HeaderError::ParametersOverflow)?;
    }

    Ok(GgufFacts {
        quantization: file_type.map(file_type_name).unwrap_or_else(|| "unknown".into()),
        architecture,
        name,
        file_type,
        parameters,
        context_length,
        tensor_count,
        version,
    })
}

/// A metadata value, as far as the reader cares.
enum Value {
    /// Any integer type, widened.
    Int(i128),
    /// A string that was asked for.
    Str(String),
    /// Anything else, skipped without allocating.
    Skipped,
}

/// A cursor over the file that knows how many bytes are left, so that no length is trusted.
struct Reader<R> {
    inner: BufReader<R>,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Result<(), HeaderError> {
        if n > self.remaining() {
            return Err(HeaderError::Truncated { what: what.to_owned(), pos: self.pos, len: self.len });
        }
        Ok(())
    }

    /// Refuses a count of items of at least `min_bytes` each that the rest of the file cannot hold.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), HeaderError> {
        if count > self.remaining() / min_bytes {
            return Err(HeaderError::CountTooLarge { count, what: what.to_owned(), remaining: self.remaining() });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], HeaderError> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(|error| HeaderError::Read { what: what.to_owned(), error })?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, HeaderError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, HeaderError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), HeaderError> {
        self.need(n, what)?;
        // `need` bounds n by the file length, which fits in an i64 on every real filesystem.
        let step = i64::try_from(n).map_err(|_| HeaderError::TooLong { what: what.to_owned() })?;
        // seek_relative keeps the buffer when the target is inside it, so skipping a vocabulary
        // of short strings costs no extra reads.
        self.inner.seek_relative(step).map_err(|error| HeaderError::Read { what: what.to_owned(), error })?;
        self.pos += n;
        Ok(())
    }

    fn string_len(&mut self, max: u64, what: &str) -> Result<u64, HeaderError> {
        let n = self.u64(what)?;
        self.need(n, what)?;
        if n > max {
            return Err(HeaderError::StringTooLong { what: what.to_owned(), len: n, max });
        }
        Ok(n)
    }

    fn string(&mut self, max: u64, what: &str) -> Result<String, HeaderError> {
        let n = self.string_len(max, what)?;
        // Bounded by `max` and by the bytes left in the file.
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|error| HeaderError::Read { what: what.to_owned(), error })?;
        self.pos += n;
        String::from_utf8(buf).map_err(|_| HeaderError::NotUtf8 { what: what.to_owned() })
    }

    fn skip_string(&mut self, max: u64, what: &str) -> Result<(), HeaderError> {
        let n = self.string_len(max, what)?;
        self.skip(n, what)
    }

    /// Reads an integer or (when `keep_string`) a string value; skips anything else.
    fn value(&mut self, ty: u32, keep_string: bool, depth: u32, what: &str) -> Result<Value, HeaderError> {
        let v = match ty {
            T_UINT8 => Value::Int(u8::from_le_bytes(self.array(what)?).into()),
            T_INT8 => Value::Int(i8::from_le_bytes(self.array(what)?).into()),
            T_UINT16 => Value::Int(u16::from_le_bytes(self.array(what)?).into()),
            T_INT16 => Value::Int(i16::from_le_bytes(self.array(what)?).into()),
            T_UINT32 => Value::Int(u32::from_le_bytes(self.array(what)?).into()),
            T_INT32 => Value::Int(i32::from_le_bytes(self.array(what)?).into()),
            T_UINT64 => Value::Int(u64::from_le_bytes(self.array(what)?).into()),
            T_INT64 => Value::Int(i64::from_le_bytes(self.array(what)?).into()),
            T_FLOAT32 | T_BOOL | T_FLOAT64 => {
                self.skip(fixed_size(ty).unwrap_or(0), what)?;
                Value::Skipped
            }
            T_STRING if keep_string => Value::Str(self.string(MAX_KEPT_STRING, what)?),
            T_STRING => {
                self.skip_string(u64::MAX, what)?;
                Value::Skipped
            }
            T_ARRAY => {
                self.skip_array(depth, what)?;
                Value::Skipped
            }
            _ => return Err(HeaderError::UnknownValueType { what: what.to_owned(), ty }),
        };
        Ok(v)
    }

    fn skip_array(&mut self, depth: u32, what: &str) -> Result<(), HeaderError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(HeaderError::TooDeep { what: what.to_owned() });
        }
        let elem = self.u32(what)?;
        let count = self.u64(what)?;
        match elem {
            T_STRING => {
                self.check_count(count, 8, &format!("strings in {what}"))?;
                for _ in 0..count {
                    self.skip_string(u64::MAX, what)?;
                }
            }
            T_ARRAY => {
                self.check_count(count, MIN_ARRAY_BYTES, &format!("arrays in {what}"))?;
                for _ in 0..count {
                    self.skip_array(depth + 1, what)?;
                }
            }
            _ => {
                let size = fixed_size(elem)
                    .ok_or_else(|| HeaderError::UnknownElementType { what: what.to_owned(), ty: elem })?;
                self.check_count(count, size, &format!("elements in {what}"))?;
                self.skip(count * size, what)?;
            }
        }
        Ok(())
    }
}

/// The size of a fixed-size value type, in bytes.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        T_UINT8 | T_INT8 | T_BOOL => Some(1),
        T_UINT16 | T_INT16 => Some(2),
        T_UINT32 | T_INT32 | T_FLOAT32 => Some(4),
        T_UINT64 | T_INT64 | T_FLOAT64 => Some(8),
        _ => None,
    }
}

/// A minimal GGUF writer for tests (here and in the registry): the header, a realistic spread
/// of metadata types (including a vocabulary-like string array and nested arrays) and tensor
/// infos, then a few bytes of "tensor data".
#[cfg(test)]
pub(crate) fn write_test_gguf(
    path: &Path,
    arch: &str,
    file_type: Option<u32>,
    context_length: Option<u32>,
    tensors: &[(&str, &[u64])],
) {
    let mut w = test_writer::Gguf::new(3);
    w.kv_str("general.architecture", arch);
    w.kv_str("general.name", "Test Model");
    if let Some(ft) = file_type {
        w.kv_u32("general.file_type", ft);
    }
    w.kv_raw("general.quantization_version", T_UINT32, &2u32.to_le_bytes());
    w.kv_raw("tokenizer.ggml.add_bos_token", T_BOOL, &[1]);
    w.kv_raw(&format!("{arch}.rope.freq_base"), T_FLOAT32, &10_000f32.to_le_bytes());
    w.kv_str_array("tokenizer.ggml.tokens", &["<pad>", "<eos>", "hello", "▁world"]);
    w.kv_nested_array("test.nested", &[&[1, 2, 3], &[], &[-4]]);
    if let Some(c) = context_length {
        w.kv_u32(&format!("{arch}.context_length"), c);
    }
    w.kv_raw("other.context_length", T_UINT64, &7u64.to_le_bytes());
    for (name, dims) in tensors {
        w.tensor(name, dims, 12);
    }
    std::fs::write(path, w.finish()).expect("write the test GGUF");
}

#[cfg(test)]
pub(crate) mod test_writer {
    use super::*;

    /// Builds a GGUF file in memory, counting entries as they are added.
    pub(crate) struct Gguf {
        version: u32,
        kvs: Vec<u8>,
        kv_count: u64,
        tensors: Vec<u8>,
        tensor_count: u64,
        offset: u64,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    impl Gguf {
        pub(crate) fn new(version: u32) -> Self {
            Gguf { version, kvs: Vec::new(), kv_count: 0, tensors: Vec::new(), tensor_count: 0, offset: 0 }
        }

        pub(crate) fn kv_raw(&mut self, key: &str, ty: u32, value: &[u8]) {
            put_str(&mut self.kvs, key);
            self.kvs.extend_from_slice(&ty.to_le_bytes());
            self.kvs.extend_from_slice(value);
            self.kv_count += 1;
        }

        pub(crate) fn kv_u32(&mut self, key: &str, v: u32) {
            self.kv_raw(key, T_UINT32, &v.to_le_bytes());
        }

        pub(crate) fn kv_str(&mut self, key: &str, v: &str) {
            let mut b = Vec::new();
            put_str(&mut b, v);
            self.kv_raw(key, T_STRING, &b);
        }

        pub(crate) fn kv_str_array(&mut self, key: &str, items: &[&str]) {
            let mut b = Vec::new();
            b.extend_from_slice(&T_STRING.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_str(&mut b, s);
            }
            self.kv_raw(key, T_ARRAY, &b);
        }

        pub(crate) fn kv_nested_array(&mut self, key: &str, items: &[&[i32]]) {
            let mut b = Vec::new();
            b.extend_from_slice(&T_ARRAY.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for inner in items {
                b.extend_from_slice(&T_INT32.to_le_bytes());
                b.extend_from_slice(&(inner.len() as u64).to_le_bytes());
                for v in *inner {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            }
            self.kv_raw(key, T_ARRAY, &b);
        }

        pub(crate) fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32) {
            put_str(&mut self.tensors, name);
            self.tensors.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                self.tensors.extend_from_slice(&d.to_le_bytes());
            }
            self.tensors.extend_from_slice(&ggml_type.to_le_bytes());
            self.tensors.extend_from_slice(&self.offset.to_le_bytes());
            self.offset += 32;
            self.tensor_count += 1;
        }

        /// The whole file: header, metadata, tensor infos, then padding and fake tensor data.
        pub(crate) fn finish(self) -> Vec<u8> {
            let mut out = self.header(self.tensor_count, self.kv_count);
            out.extend_from_slice(&self.kvs);
            out.extend_from_slice(&self.tensors);
            out.resize(out.len().div_ceil(32) * 32, 0);
            out.extend(std::iter::repeat_n(0xA5u8, self.offset as usize));
            out
        }

        /// Where the header (metadata and tensor infos) ends and padding begins.
        pub(crate) fn header_len(&self) -> usize {
            24 + self.kvs.len() + self.tensors.len()
        }

        /// Just the fixed header, with any counts (for hostile-file tests).
        pub(crate) fn header(&self, tensor_count: u64, kv_count: u64) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&tensor_count.to_le_bytes());
            out.extend_from_slice(&kv_count.to_le_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_writer::Gguf;
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_the_facts_of_a_synthetic_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        write_test_gguf(&p, "gemma3", Some(15), Some(8192), &[("tok_embd", &[64, 100]), ("norm", &[64])]);
        let f = read_facts(&p).unwrap();
        assert_eq!(
            f,
            GgufFacts {
                architecture: "gemma3".into(),
                name: Some("Test Model".into()),
                file_type: Some(15),
                quantization: "Q4_K_M".into(),
                parameters: 64 * 100 + 64,
                context_length: Some(8192),
                tensor_count: 2,
                version: 3,
            }
        );
    }

    #[test]
    fn optional_facts_may_be_missing_and_v2_is_read() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Gguf::new(2);
        w.kv_str("general.architecture", "llama");
        // A context length for another architecture is not this model's.
        w.kv_u32("bert.context_length", 512);
        let p = write(&d, "m.gguf", &w.finish());
        let f = read_facts(&p).unwrap();
        assert_eq!((f.architecture.as_str(), f.version, f.tensor_count, f.parameters), ("llama", 2, 0, 0));
        assert_eq!((f.name, f.file_type, f.context_length), (None, None, None));
        assert_eq!(f.quantization, "unknown");
    }

    #[test]
    fn refuses_non_gguf_and_unsupported_versions() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "x.bin", b"not a model at all");
        let e = read_facts(&p).unwrap_err().to_string();
        assert!(e.contains("x.bin") && e.contains("not a GGUF file"), "{e}");

        let p = write(&d, "v1.gguf", &Gguf::new(1).finish());
        let e = read_facts(&p).unwrap_err().to_string();
        assert!(e.contains("v1.gguf") && e.contains("version 1 is not supported"), "{e}");

        let p = write(&d, "be.gguf", &Gguf::new(3u32.swap_bytes()).finish());
        let e = read_facts(&p).unwrap_err().to_string();
        assert!(e.contains("big-endian"), "{e}");

        let e = read_facts(&d.path().join("missing.gguf")).unwrap_err().to_string();
        assert!(e.contains("missing.gguf") && e.contains("cannot open"), "{e}");

        let mut w = Gguf::new(3);
        w.kv_str("general.name", "no arch");
        let p = write(&d, "noarch.gguf", &w.finish());
        let e = read_facts(&p).unwrap_err().to_string();
        assert!(e.contains("no general.architecture"), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Gguf::new(3);
        w.kv_str("general.architecture", "gemma3");
        w.kv_str_array("tokenizer.ggml.tokens", &["a", "bb", "ccc"]);
        w.kv_nested_array("x.nested", &[&[1], &[2, 3]]);
        w.kv_u32("gemma3.context_length", 4096);
        w.tensor("t", &[2, 3], 0);
        let header_len = w.header_len();
        let full = w.finish();
        assert!(read_facts(&write(&d, "full.gguf", &full)).is_ok());
        // Cut at every byte inside the header; the tensor data after it is never read.
        for cut in 0..header_len {
            let p = write(&d, "cut.gguf", &full[..cut]);
            let e = read_facts(&p).expect_err(&format!("a file cut at {cut} bytes must be refused")).to_string();
            assert!(e.contains("cut.gguf"), "{e}");
            assert!(e.contains("truncated") || e.contains("more than") || e.contains("not a GGUF"), "cut {cut}: {e}");
        }
    }

    #[test]
    fn absurd_counts_and_lengths_are_refused_without_allocating() {
        let d = tempfile::tempdir().unwrap();
        let w = Gguf::new(3);
        let p = write(&d, "kv.gguf", &w.header(0, u64::MAX));
        let e = read_facts(&p).unwrap_err().to_string();
        assert!(e.contains("kv.gguf") && e.contains("metadata entries"), "{e}");
        let p = write(&d, "t.gguf", &w.header(u64::MAX / 2, 0));
        let e = read_facts(&p).unwrap_err().to_string();
        assert!(e.contains("tensors"), "{e}");

        // A key claiming to be 2^60 bytes long.
        let mut b = w.header(0, 1);
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        b.extend_from_slice(&[b'a'; 64]);
        let e = read_facts(&write(&d, "key.gguf", &b)).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");

        // Arrays claiming far more elements than the file holds, of each kind.
        for (elem, count) in [(T_UINT8, u64::MAX), (T_FLOAT64, u64::MAX / 4), (T_STRING, 1 << 40), (T_ARRAY, 1 << 40)] {
            let mut v = Vec::new();
            v.extend_from_slice(&elem.to_le_bytes());
            v.extend_from_slice(&count.to_le_bytes());
            v.extend_from_slice(&[0; 64]);
            let mut w = Gguf::new(3);
            w.kv_raw("big.array", T_ARRAY, &v);
            let e = read_facts(&write(&d, "arr.gguf", &w.finish())).unwrap_err().to_string();
            assert!(e.contains("more than") && e.contains("big.array"), "elem {elem}: {e}");
        }

        // Arrays nested deeper than anyone needs.
        let mut v = Vec::new();
        for _ in 0..100 {
            v.extend_from_slice(&T_ARRAY.to_le_bytes());
            v.extend_from_slice(&1u64.to_le_bytes());
        }
        let mut w = Gguf::new(3);
        w.kv_raw("deep", T_ARRAY, &v);
        let e = read_facts(&write(&d, "deep.gguf", &w.finish())).unwrap_err().to_string();
        assert!(e.contains("nests arrays"), "{e}");

        // Too many dimensions, and dimensions whose product overflows.
        let mut w = Gguf::new(3);
        w.kv_str("general.architecture", "x");
        w.tensor("t", &[1, 1, 1, 1, 1], 0);
        let e = read_facts(&write(&d, "dims.gguf", &w.finish())).unwrap_err().to_string();
        assert!(e.contains("5 dimensions"), "{e}");
        let mut w = Gguf::new(3);
        w.kv_str("general.architecture", "x");
        w.tensor("t", &[1 << 40, 1 << 40], 0);
        let e = read_facts(&write(&d, "ovf.gguf", &w.finish())).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");

        // Unknown value type.
        let mut w = Gguf::new(3);
        w.kv_raw("weird", 99, &[0; 8]);
        let e = read_facts(&write(&d, "ty.gguf", &w.finish())).unwrap_err().to_string();
        assert!(e.contains("unknown value type 99"), "{e}");

        // A kept string that is not UTF-8.
        let mut w = Gguf::new(3);
        let mut s = 2u64.to_le_bytes().to_vec();
        s.extend_from_slice(&[0xff, 0xfe]);
        w.kv_raw("general.architecture", T_STRING, &s);
        let e = read_facts(&write(&d, "utf8.gguf", &w.finish())).unwrap_err().to_string();
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn file_type_names() {
        assert_eq!(file_type_name(15), "Q4_K_M");
        assert_eq!(file_type_name(32), "BF16");
        assert_eq!(file_type_name(999), "file_type 999");
    }

    /// The real model named by TOLLGATE_TEST_MODEL (Gemma 3 270M, Q4_K_M), when there is one.
    #[test]
    fn reads_the_real_test_model() {
        let Some(path) = std::env::var_os("TOLLGATE_TEST_MODEL") else {
            eprintln!("TOLLGATE_TEST_MODEL is not set; skipping");
            return;
        };
        let f = read_facts(Path::new(&path)).unwrap();
        eprintln!("{f:?}");
        assert_eq!(f.architecture, "gemma3");
        assert_eq!(f.quantization, "Q4_K_M");
        assert!((200_000_000..300_000_000).contains(&f.parameters), "{}", f.parameters);
        assert_eq!(f.context_length, Some(32768));
    }
}
