//! Facts about a GGUF file before and after loading: the checks that give a clear error at
//! start (missing file, not GGUF, larger than memory), the SHA-256 (cached by path, size and
//! mtime, since hashing a large model takes seconds), and the metadata shown in `/v1/models`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub architecture: String,
    pub name: Option<String>,
    pub quantization: String,
    pub parameters: u64,
    pub context_trained: u32,
    pub context: u32,
    pub parallel: u32,
    /// The chat template in use and where it came from.
    pub chat_template: String,
    pub chat_template_source: &'static str,
}

/// Why a model file is refused before llama.cpp sees it.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{}: cannot open the model file: {error}", .path.display())]
    Open { path: PathBuf, error: std::io::Error },
    #[error("{}: not a file", .0.display())]
    NotAFile(PathBuf),
    #[error("{}: cannot read the model file: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{}: not a GGUF file (it does not start with the GGUF magic)", .0.display())]
    NotGguf(PathBuf),
    #[error("{}: the model needs {} MiB but only {} MiB of memory is available", .path.display(), .size >> 20, .available >> 20)]
    TooLarge { path: PathBuf, size: u64, available: u64 },
}

/// Checks the file before llama.cpp sees it; its size.
pub fn precheck(path: &Path) -> Result<u64, ModelFileError> {
    let meta = std::fs::metadata(path).map_err(|error| ModelFileError::Open { path: path.to_owned(), error })?;
    if !meta.is_file() {
        return Err(ModelFileError::NotAFile(path.to_owned()));
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|error| ModelFileError::Read { path: path.to_owned(), error })?;
    if &magic != b"GGUF" {
        return Err(ModelFileError::NotGguf(path.to_owned()));
    }
    if let Some(available) = mem_available() {
        if meta.len() > available {
            return Err(ModelFileError::TooLarge { path: path.to_owned(), size: meta.len(), available });
        }
    }
    Ok(meta.len())
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[derive(Default, Serialize, Deserialize)]
struct HashCache {
    entries: HashMap<String, CachedHash>,
}

#[derive(Serialize, Deserialize)]
struct CachedHash {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

fn cache_file() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tollgate").join("model-sha256.json")
}

/// The file's SHA-256, from the cache when its size and mtime are unchanged.
pub fn sha256_cached(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string();
    let cf = cache_file();
    let mut cache: HashCache =
        std::fs::read(&cf).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if let Some(c) = cache.entries.get(&key) {
        if c.size == meta.len() && c.mtime_ns == mtime_ns {
            return Ok(c.sha256.clone());
        }
    }
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let sha = hex::encode(h.finalize());
    cache.entries.insert(key, CachedHash { size: meta.len(), mtime_ns, sha256: sha.clone() });
    if let Some(dir) = cf.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // A cache that cannot be written only costs a re-hash next time.
    if let Ok(bytes) = serde_json::to_vec(&cache) {
        let tmp = cf.with_extension("json.tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(tmp, &cf);
        }
    }
    Ok(sha)
}

pub use crate::registry::gguf::file_type_name;

/// llama.cpp's built-in template for an architecture whose GGUF carries none.
pub fn builtin_template_for(arch: &str) -> &'static str {
    match arch {
        a if a.starts_with("gemma") => "gemma",
        "llama" => "llama3",
        a if a.starts_with("qwen") => "chatml",
        a if a.starts_with("phi3") => "phi3",
        a if a.starts_with("mistral") => "mistral-v7",
        a if a.starts_with("deepseek") => "deepseek3",
        _ => "chatml",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_missing_and_non_gguf_files() {
        let e = precheck(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(e, ModelFileError::Open { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("/nonexistent/model.gguf"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.gguf");
        std::fs::write(&p, b"not a model").unwrap();
        let e = precheck(&p).unwrap_err().to_string();
        assert!(e.contains("not a GGUF file") && e.contains("x.gguf"), "{e}");
    }
}
