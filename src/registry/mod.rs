//! The model registry on disk: named, immutable, semver-versioned models, each either a GGUF
//! file the registry holds or a remote OpenAI/Ollama endpoint it points to.
//!
//! Layout, under the root:
//! ```text
//! <root>/<name>/<version>/metadata.json   VersionMeta, pretty JSON
//! <root>/<name>/<version>/model.gguf      a GGUF version's weights
//! <root>/<name>/.tmp-<version>-<random>/  a version being added (ignored by readers)
//! ```
//!
//! Invariants:
//! - A version is published by renaming its finished temp directory into place, so readers see
//!   a whole version or none; a failed add removes its temp directory.
//! - Versions are immutable: adding one that exists is refused, never overwritten.
//! - Names match `^[a-z0-9][a-z0-9._-]{0,63}$` and versions are `MAJOR.MINOR.PATCH` with an
//!   optional `-prerelease`, so neither can escape the root or collide with a temp directory.
//! - A GGUF file is read (see [`gguf`]) before anything is written, and placed by hard link
//!   when the root is on the same filesystem (instant, no extra space), else by copy. A hard
//!   link shares the source's inode: editing the source in place would change the registered
//!   bytes, which the recorded SHA-256 then exposes.
//!
//! Everything here is blocking file I/O; call it off the async runtime.

mod error;
pub mod gguf;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::{Existing, RegistryError};

const METADATA: &str = "metadata.json";
const GGUF_FILE: &str = "model.gguf";
const TMP_PREFIX: &str = ".tmp-";
const MAX_VERSION_LEN: usize = 64;

/// What the registry records about one version of a model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VersionMeta {
    pub name: String,
    pub version: String,
    /// Hex SHA-256 of the GGUF file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// llama.cpp's name for the file type, e.g. `Q4_K_M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// The context the model was trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// When the version was added, RFC 3339 UTC (`2026-11-30T03:41:07Z`).
    pub created_at: String,
    /// Where it came from: by default the absolute path of the GGUF file added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Free-form evaluation results and the like, e.g. `{"mmlu": 0.41}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// The weights file inside the version directory (`model.gguf`); `None` for a remote model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The remote endpoint serving a remote model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
}

/// A model served elsewhere.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    /// `openai` or `ollama`.
    pub kind: String,
    pub base_url: String,
    /// The model name the endpoint knows it by.
    pub model: String,
}

/// The registry rooted at one directory.
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    pub fn new(root: PathBuf) -> Self {
        Registry { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds the GGUF `file` as `name@version`, reading its facts and hashing it.
    pub fn add_gguf(
        &self,
        file: &Path,
        name: &str,
        version: &str,
        source: Option<String>,
        metrics: BTreeMap<String, serde_json::Value>,
    ) -> Result<VersionMeta, RegistryError> {
        check_name_version(name, version)?;
        // Read first, so a file that is not a model is refused before anything is written.
        let facts = gguf::read_facts(file)?;
        self.refuse_existing(name, version)?;
        let source = match source {
            Some(s) => s,
            None => {
                std::fs::canonicalize(file).map_err(RegistryError::io(file, "resolve the path"))?.display().to_string()
            }
        };
        self.publish(name, version, |tmp| {
            let placed = tmp.join(GGUF_FILE);
            place_file(file, &placed)?;
            let (sha256, size) = sha256_file(&placed)?;
            Ok(VersionMeta {
                name: name.to_owned(),
                version: version.to_owned(),
                sha256: Some(sha256),
                size_bytes: Some(size),
                quantization: Some(facts.quantization),
                parameters: Some(facts.parameters),
                context_length: facts.context_length,
                architecture: Some(facts.architecture),
                created_at: rfc3339_utc(SystemTime::now()),
                source: Some(source),
                metrics,
                file: Some(GGUF_FILE.to_owned()),
                endpoint: None,
            })
        })
    }

    /// Adds `name@version` as a model served by a remote endpoint (only metadata is written).
    pub fn add_remote(
        &self,
        name: &str,
        version: &str,
        endpoint: Endpoint,
        source: Option<String>,
        metrics: BTreeMap<String, serde_json::Value>,
    ) -> Result<VersionMeta, RegistryError> {
        check_name_version(name, version)?;
        if endpoint.kind != "openai" && endpoint.kind != "ollama" {
            return Err(RegistryError::UnsupportedEndpointKind(endpoint.kind));
        }
        if !(endpoint.base_url.starts_with("http://") || endpoint.base_url.starts_with("https://")) {
            return Err(RegistryError::BadEndpointUrl(endpoint.base_url));
        }
        if endpoint.model.trim().is_empty() {
            return Err(RegistryError::EmptyEndpointModel);
        }
        self.refuse_existing(name, version)?;
        self.publish(name, version, |_| {
            Ok(VersionMeta {
                name: name.to_owned(),
                version: version.to_owned(),
                sha256: None,
                size_bytes: None,
                quantization: None,
                parameters: None,
                context_length: None,
                architecture: None,
                created_at: rfc3339_utc(SystemTime::now()),
                source,
                metrics,
                file: None,
                endpoint: Some(endpoint),
            })
        })
    }

    /// The metadata of `name@version`.
    pub fn get(&self, name: &str, version: &str) -> Result<VersionMeta, RegistryError> {
        check_name_version(name, version)?;
        let dir = self.version_dir(name, version);
        if !dir.is_dir() {
            return Err(RegistryError::NotFound {
                name: name.to_owned(),
                version: version.to_owned(),
                root: self.root.clone(),
            });
        }
        let meta = read_meta(&dir.join(METADATA))?;
        if meta.name != name || meta.version != version {
            return Err(RegistryError::WrongMetadata {
                path: dir.join(METADATA),
                found: format!("{}@{}", meta.name, meta.version),
                name: name.to_owned(),
                version: version.to_owned(),
            });
        }
        Ok(meta)
    }

    /// Every version of `name`, oldest (by semver precedence) first; none if the name is unknown.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionMeta>, RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::InvalidName(name.to_owned()));
        }
        let mut versions = subdirs(&self.root.join(name), valid_version)?;
        versions.sort_by(|a, b| compare_versions(a, b));
        versions.iter().map(|v| self.get(name, v)).collect()
    }

    /// Every version of every model, by name, then by version.
    pub fn list(&self) -> Result<Vec<VersionMeta>, RegistryError> {
        let mut names = subdirs(&self.root, valid_name)?;
        names.sort();
        let mut all = Vec::new();
        for name in names {
            all.extend(self.versions(&name)?);
        }
        Ok(all)
    }

    /// Where a GGUF version's weights are; `None` for a remote version (or a `file` that is not
    /// a plain file name, which a hand-edited metadata.json could hold).
    pub fn gguf_path(&self, meta: &VersionMeta) -> Option<PathBuf> {
        let file = meta.file.as_deref()?;
        let mut parts = Path::new(file).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(_)), None) => Some(self.version_dir(&meta.name, &meta.version).join(file)),
            _ => None,
        }
    }

    fn version_dir(&self, name: &str, version: &str) -> PathBuf {
        self.root.join(name).join(version)
    }

    fn refuse_existing(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let dir = self.version_dir(name, version);
        if !dir.exists() {
            return Ok(());
        }
        let existing = match read_meta(&dir.join(METADATA)) {
            Ok(VersionMeta { sha256: Some(sha), .. }) => Existing::Sha256(sha),
            Ok(VersionMeta { endpoint: Some(ep), .. }) => {
                Existing::Endpoint { kind: ep.kind, base_url: ep.base_url, model: ep.model }
            }
            Ok(_) => Existing::NothingRecorded,
            Err(e) => Existing::Unreadable(Box::new(e)),
        };
        Err(RegistryError::Exists { name: name.to_owned(), version: version.to_owned(), existing })
    }

    /// Builds a version in a fresh temp directory with `fill` (which places any files and returns
    /// the metadata), writes metadata.json, and renames the directory into place. On any error
    /// the temp directory is removed.
    fn publish(
        &self,
        name: &str,
        version: &str,
        fill: impl FnOnce(&Path) -> Result<VersionMeta, RegistryError>,
    ) -> Result<VersionMeta, RegistryError> {
        let parent = self.root.join(name);
        std::fs::create_dir_all(&parent).map_err(RegistryError::io(&parent, "create"))?;
        let tmp = parent.join(format!("{TMP_PREFIX}{version}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&tmp).map_err(RegistryError::io(&tmp, "create"))?;
        let result = fill(&tmp).and_then(|meta| {
            write_meta(&tmp.join(METADATA), &meta)?;
            let dest = self.version_dir(name, version);
            // rename(2) will not replace a non-empty directory, so a concurrent add of the same
            // version loses here instead of overwriting the winner.
            self.refuse_existing(name, version)?;
            std::fs::rename(&tmp, &dest).map_err(|e| match self.refuse_existing(name, version) {
                Err(exists) => exists,
                Ok(()) => RegistryError::io(&dest, "publish")(e),
            })?;
            Ok(meta)
        });
        if result.is_err() {
            // Best effort: a leftover temp directory is ignored by every reader.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }
}

/// Splits `NAME` or `NAME@X.Y.Z` into a validated name and optional version.
pub fn parse_ref(s: &str) -> Result<(String, Option<String>), RegistryError> {
    let (name, version) = match s.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    if !valid_name(name) {
        return Err(RegistryError::InvalidName(name.to_owned()));
    }
    if let Some(v) = version {
        if !valid_version(v) {
            return Err(RegistryError::InvalidVersion(v.to_owned()));
        }
    }
    Ok((name.to_owned(), version.map(str::to_owned)))
}

/// `^[a-z0-9][a-z0-9._-]{0,63}$`.
pub fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

/// Semver `MAJOR.MINOR.PATCH` with an optional `-prerelease` of dot-separated `[0-9A-Za-z-]+`
/// identifiers. Numbers have no leading zeros (as semver requires), so no two valid versions
/// are equal in precedence yet spelled differently. No leading `v`, no `+build`.
pub fn valid_version(v: &str) -> bool {
    v.len() <= MAX_VERSION_LEN && parse_version(v).is_some()
}

/// Semver precedence: numbers compare numerically, a prerelease comes before its release, and
/// prerelease identifiers compare numerically when numeric, numbers before words, a shorter
/// list before a longer one it prefixes. Invalid versions sort after valid ones, by bytes.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (parse_version(a), parse_version(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// A parsed version, ordered by semver precedence.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Semver {
    core: [u64; 3],
    pre: ReleaseOrPre,
}

/// Declared in this order so that a release sorts after any of its prereleases.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum ReleaseOrPre {
    Pre(Vec<PreId>),
    Release,
}

/// Numeric identifiers sort before alphanumeric ones.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum PreId {
    Num(u64),
    Alpha(String),
}

fn parse_version(v: &str) -> Option<Semver> {
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let mut nums = core.split('.');
    let mut next = || nums.next().and_then(parse_number);
    let core = [next()?, next()?, next()?];
    if nums.next().is_some() {
        return None;
    }
    let pre = match pre {
        None => ReleaseOrPre::Release,
        Some(p) => ReleaseOrPre::Pre(
            p.split('.')
                .map(|id| {
                    if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                        None
                    } else if id.bytes().all(|c| c.is_ascii_digit()) {
                        parse_number(id).map(PreId::Num)
                    } else {
                        Some(PreId::Alpha(id.to_owned()))
                    }
                })
                .collect::<Option<Vec<_>>>()?,
        ),
    };
    Some(Semver { core, pre })
}

/// A decimal number without leading zeros that fits a u64.
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn check_name_version(name: &str, version: &str) -> Result<(), RegistryError> {
    if !valid_name(name) {
        return Err(RegistryError::InvalidName(name.to_owned()));
    }
    if !valid_version(version) {
        return Err(RegistryError::InvalidVersion(version.to_owned()));
    }
    Ok(())
}

/// The names of the directories in `dir` that `keep` accepts; none if `dir` does not exist.
/// Temp directories (and anything else starting with '.') are never accepted by `keep`.
fn subdirs(dir: &Path, keep: fn(&str) -> bool) -> Result<Vec<String>, RegistryError> {
    const ACTION: &str = "read the registry directory";
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RegistryError::io(dir, ACTION)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(RegistryError::io(dir, ACTION))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !name.starts_with(TMP_PREFIX) && keep(&name) && entry.path().is_dir() {
            out.push(name);
        }
    }
    Ok(out)
}

fn read_meta(path: &Path) -> Result<VersionMeta, RegistryError> {
    let bytes = std::fs::read(path).map_err(RegistryError::io(path, "read"))?;
    serde_json::from_slice(&bytes).map_err(|error| RegistryError::BadMetadata { path: path.to_owned(), error })
}

fn write_meta(path: &Path, meta: &VersionMeta) -> Result<(), RegistryError> {
    let mut json = serde_json::to_string_pretty(meta).map_err(RegistryError::EncodeMetadata)?;
    json.push('\n');
    let mut f = std::fs::File::create(path).map_err(RegistryError::io(path, "create"))?;
    // Synced before the directory is renamed into place, so a crash cannot publish it empty.
    f.write_all(json.as_bytes()).and_then(|()| f.sync_all()).map_err(RegistryError::io(path, "write"))
}

/// Hard-links `src` to `dest` (same filesystem: instant), else copies it.
fn place_file(src: &Path, dest: &Path) -> Result<(), RegistryError> {
    if std::fs::hard_link(src, dest).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dest).map_err(|error| RegistryError::Copy {
        from: src.to_owned(),
        to: dest.to_owned(),
        error,
    })?;
    std::fs::File::open(dest).and_then(|f| f.sync_all()).map_err(RegistryError::io(dest, "sync"))
}

/// The hex SHA-256 and size of a file, read in 1 MiB chunks.
fn sha256_file(path: &Path) -> Result<(String, u64), RegistryError> {
    let mut f = std::fs::File::open(path).map_err(RegistryError::io(path, "open"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RegistryError::io(path, "read")(e)),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// `t` as RFC 3339 UTC to the second, e.g. `2026-11-30T03:41:07Z` (times before 1970 clamp to it).
fn rfc3339_utc(t: SystemTime) -> String {
    rfc3339_ms(t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC to the second, e.g. `2026-11-30T03:41:07Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to a proleptic Gregorian
/// (year, month, day). Eras are 400-year cycles of 146,097 days starting on March 1st, so the
/// leap day falls at the end of the computed year.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (tempfile::TempDir, Registry) {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::new(d.path().join("registry"));
        (d, r)
    }

    fn test_model(dir: &Path) -> PathBuf {
        let p = dir.join("in.gguf");
        gguf::write_test_gguf(&p, "gemma3", Some(15), Some(32768), &[("a", &[16, 8]), ("b", &[8])]);
        p
    }

    fn remote(model: &str) -> Endpoint {
        Endpoint { kind: "openai".into(), base_url: "http://127.0.0.1:8000/v1".into(), model: model.into() }
    }

    /// Everything under `dir`, relative, sorted: what a failed add must leave unchanged.
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.is_dir() {
                    walk(base, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[test]
    fn adds_a_gguf_version_and_reads_it_back() {
        let (d, r) = registry();
        let src = test_model(d.path());
        let metrics = BTreeMap::from([("mmlu".to_owned(), serde_json::json!(0.41))]);
        let m = r.add_gguf(&src, "gemma", "1.0.0", None, metrics.clone()).unwrap();
        let bytes = std::fs::read(&src).unwrap();
        assert_eq!(m.sha256.as_deref(), Some(hex::encode(Sha256::digest(&bytes)).as_str()));
        assert_eq!(m.size_bytes, Some(bytes.len() as u64));
        assert_eq!(m.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(m.parameters, Some(16 * 8 + 8));
        assert_eq!(m.context_length, Some(32768));
        assert_eq!(m.architecture.as_deref(), Some("gemma3"));
        assert_eq!(m.source, Some(std::fs::canonicalize(&src).unwrap().display().to_string()));
        assert_eq!(m.metrics, metrics);
        assert_eq!((m.file.as_deref(), &m.endpoint), (Some("model.gguf"), &None));
        assert_eq!(m.created_at.len(), "2026-11-30T03:41:07Z".len(), "{}", m.created_at);
        assert!(m.created_at.ends_with('Z') && m.created_at.as_bytes()[10] == b'T', "{}", m.created_at);

        assert_eq!(r.get("gemma", "1.0.0").unwrap(), m);
        let placed = r.gguf_path(&m).unwrap();
        assert_eq!(placed, r.root().join("gemma/1.0.0/model.gguf"));
        assert_eq!(std::fs::read(&placed).unwrap(), bytes);
        let json = std::fs::read_to_string(r.root().join("gemma/1.0.0/metadata.json")).unwrap();
        assert!(json.ends_with("}\n") && json.contains("\n  \"sha256\": "), "{json}");
        assert!(!json.contains("endpoint"), "None fields are left out: {json}");
        // Nothing but the version is left in the name's directory.
        assert_eq!(tree(&r.root().join("gemma")), ["1.0.0", "1.0.0/metadata.json", "1.0.0/model.gguf"]);

        let m2 = r.add_gguf(&src, "gemma", "1.1.0", Some("hf://x/y".into()), BTreeMap::new()).unwrap();
        assert_eq!(m2.source.as_deref(), Some("hf://x/y"));
    }

    #[test]
    fn versions_are_immutable() {
        let (d, r) = registry();
        let src = test_model(d.path());
        let m = r.add_gguf(&src, "gemma", "1.0.0", None, BTreeMap::new()).unwrap();
        let before = tree(r.root());
        let e = r.add_gguf(&src, "gemma", "1.0.0", None, BTreeMap::new()).unwrap_err();
        let sha = m.sha256.unwrap();
        assert!(matches!(&e, RegistryError::Exists { existing: Existing::Sha256(s), .. } if *s == sha), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("gemma@1.0.0 is already in the registry") && e.contains(&sha), "{e}");
        assert!(e.contains("versions are immutable"), "{e}");
        let e = r.add_remote("gemma", "1.0.0", remote("g"), None, BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("already in the registry"), "{e}");
        assert_eq!(tree(r.root()), before);
    }

    #[test]
    fn bad_names_versions_and_files_are_refused_leaving_nothing() {
        let (d, r) = registry();
        let src = test_model(d.path());
        for name in ["", "Gemma", "-gemma", ".tmp-x", "a/b", "a@b", "..", &"a".repeat(65), "g emma"] {
            let e = r.add_gguf(&src, name, "1.0.0", None, BTreeMap::new()).unwrap_err().to_string();
            assert!(e.contains("not a valid model name"), "{name}: {e}");
        }
        for version in ["", "1", "1.0", "v1.0.0", "1.0.0.0", "01.0.0", "1.0.0-", "1.0.0-rc..1", "1.0.0+b", "1.0.0-r/c"]
        {
            let e = r.add_gguf(&src, "gemma", version, None, BTreeMap::new()).unwrap_err().to_string();
            assert!(e.contains("not a valid version"), "{version}: {e}");
        }
        let not_gguf = d.path().join("weights.bin");
        std::fs::write(&not_gguf, b"definitely not a model").unwrap();
        let e = r.add_gguf(&not_gguf, "gemma", "1.0.0", None, BTreeMap::new()).unwrap_err();
        assert!(matches!(e, RegistryError::Gguf(gguf::GgufError::Header { .. })), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("weights.bin") && e.contains("not a GGUF file"), "{e}");
        let e =
            r.add_gguf(&d.path().join("nope.gguf"), "gemma", "1.0.0", None, BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("nope.gguf"), "{e}");
        assert!(!r.root().exists(), "a refused add writes nothing: {:?}", tree(d.path()));
        assert!(r.list().unwrap().is_empty(), "a missing root is an empty registry");
    }

    #[test]
    fn lists_by_name_then_semver() {
        let (d, r) = registry();
        let src = test_model(d.path());
        for (name, v) in [("zeta", "1.0.0"), ("gemma", "1.10.0"), ("gemma", "1.9.0"), ("gemma", "1.0.0")] {
            r.add_gguf(&src, name, v, None, BTreeMap::new()).unwrap();
        }
        r.add_remote("gemma", "1.0.0-rc.1", remote("g"), None, BTreeMap::new()).unwrap();
        // Leftovers a reader must ignore: an abandoned temp directory and a stray file.
        std::fs::create_dir_all(r.root().join("gemma/.tmp-2.0.0-0123")).unwrap();
        std::fs::write(r.root().join("gemma/README"), b"x").unwrap();
        let got: Vec<String> = r.list().unwrap().iter().map(|m| format!("{}@{}", m.name, m.version)).collect();
        assert_eq!(got, ["gemma@1.0.0-rc.1", "gemma@1.0.0", "gemma@1.9.0", "gemma@1.10.0", "zeta@1.0.0"]);
        assert_eq!(r.versions("gemma").unwrap().len(), 4);
        assert!(r.versions("unknown").unwrap().is_empty());

        let e = r.get("gemma", "9.9.9").unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("gemma@9.9.9 is not in the registry at {}", r.root().display()));

        // A broken metadata.json is an error naming it, not a silently shorter list.
        let bad = r.root().join("gemma/1.9.0/metadata.json");
        std::fs::write(&bad, b"{not json").unwrap();
        let e = r.list().unwrap_err();
        assert!(matches!(&e, RegistryError::BadMetadata { path, .. } if *path == bad), "{e:?}");
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    }

    #[test]
    fn add_remote_round_trips() {
        let (_d, r) = registry();
        let metrics = BTreeMap::from([("note".to_owned(), serde_json::json!({"k": [1, 2]}))]);
        let m = r.add_remote("qwen", "0.1.0", remote("qwen2.5:7b"), Some("ops".into()), metrics.clone()).unwrap();
        assert_eq!(r.get("qwen", "0.1.0").unwrap(), m);
        assert_eq!((m.endpoint, m.file.clone(), m.sha256.clone()), (Some(remote("qwen2.5:7b")), None, None));
        assert_eq!((m.source.as_deref(), m.metrics.clone()), (Some("ops"), metrics));
        assert_eq!(r.gguf_path(&r.get("qwen", "0.1.0").unwrap()), None);
        assert_eq!(tree(&r.root().join("qwen")), ["0.1.0", "0.1.0/metadata.json"]);

        let ep = Endpoint { kind: "vllm".into(), ..remote("m") };
        assert!(r
            .add_remote("qwen", "0.2.0", ep, None, BTreeMap::new())
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        let ep = Endpoint { base_url: "ftp://x".into(), ..remote("m") };
        assert!(r.add_remote("qwen", "0.2.0", ep, None, BTreeMap::new()).unwrap_err().to_string().contains("http://"));
        let ep = Endpoint { kind: "ollama".into(), base_url: "https://h:11434".into(), model: "m".into() };
        assert!(r.add_remote("qwen", "0.2.0", ep, None, BTreeMap::new()).is_ok());
    }

    #[test]
    fn gguf_path_refuses_paths_outside_the_version() {
        let (_d, r) = registry();
        let mut m = r.add_remote("x", "1.0.0", remote("m"), None, BTreeMap::new()).unwrap();
        for bad in ["../../etc/passwd", "/etc/passwd", "a/b", ".", ""] {
            m.file = Some(bad.into());
            assert_eq!(r.gguf_path(&m), None, "{bad}");
        }
    }

    #[test]
    fn parses_refs() {
        assert_eq!(parse_ref("gemma").unwrap(), ("gemma".into(), None));
        assert_eq!(parse_ref("gemma-3.270m@1.0.0-rc.1").unwrap(), ("gemma-3.270m".into(), Some("1.0.0-rc.1".into())));
        assert!(parse_ref("gemma@").unwrap_err().to_string().contains("not a valid version"));
        assert!(parse_ref("gemma@v1.0.0").unwrap_err().to_string().contains("not a valid version"));
        assert!(parse_ref("gemma@1.0.0@2.0.0").unwrap_err().to_string().contains("not a valid version"));
        assert!(parse_ref("@1.0.0").unwrap_err().to_string().contains("not a valid model name"));
        assert!(parse_ref("Gemma").unwrap_err().to_string().contains("not a valid model name"));
    }

    #[test]
    fn semver_precedence() {
        // The ordered example from semver.org §11, then numeric (not textual) comparison.
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.9.0",
            "1.10.0",
            "2.0.0",
            "10.0.0",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare_versions(w[0], w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
            assert_eq!(compare_versions(w[1], w[0]), Ordering::Greater, "{} > {}", w[1], w[0]);
        }
        assert_eq!(compare_versions("1.2.3", "1.2.3"), Ordering::Equal);
        assert_eq!(compare_versions("1.0.0", "junk"), Ordering::Less);
        assert!(ordered.iter().all(|v| valid_version(v)));
        assert!(!valid_version("99999999999999999999.0.0"), "larger than a u64");
        assert!(!valid_version(&format!("1.0.0-{}", "a".repeat(64))));
        assert!(valid_name("a") && valid_name(&"a".repeat(64)) && valid_name("0.x_y-z"));
    }

    #[test]
    fn formats_rfc3339_utc() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_796_010_067), "2026-11-30T03:41:07Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(rfc3339_ms(1_796_010_067_999), "2026-11-30T03:41:07Z");
    }
}
