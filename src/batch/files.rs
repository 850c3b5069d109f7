//! `/v1/files` storage: each file is `<data_dir>/files/<id>.data` with its OpenAI file object
//! and its owner (the key that uploaded it, or the batch that made it) beside it in
//! `<id>.json`, written after the data and by rename, so a listed file is whole. A key sees its
//! own files only; in open mode every file is visible.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
    pub status: String,
    pub status_details: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    file: FileObject,
    key: Option<String>,
}

pub struct FileStore {
    dir: PathBuf,
}

/// Writes `bytes` to `path` through a temporary file and a rename: readers see all or nothing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn valid_id(id: &str) -> bool {
    id.starts_with("file-") && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl FileStore {
    pub fn new(dir: PathBuf) -> Self {
        FileStore { dir }
    }

    pub fn data_path(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.dir.join(format!("{id}.data")))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn new_id() -> String {
        format!("file-{}", uuid::Uuid::new_v4().simple())
    }

    /// A file whose data is already at `data_path(id)`: records its object.
    pub fn commit(&self, id: &str, filename: &str, purpose: &str, key: Option<&str>) -> std::io::Result<FileObject> {
        let path = self.data_path(id).ok_or_else(|| std::io::Error::other("bad file id"))?;
        let bytes = std::fs::metadata(&path)?.len();
        let f = FileObject {
            id: id.to_owned(),
            object: "file".into(),
            bytes,
            created_at: crate::clock::now_ms() / 1000,
            filename: filename.to_owned(),
            purpose: purpose.to_owned(),
            status: "processed".into(),
            status_details: None,
        };
        let stored = Stored { file: f.clone(), key: key.map(str::to_owned) };
        write_atomic(&self.meta_path(id), &serde_json::to_vec(&stored).unwrap_or_default())?;
        Ok(f)
    }

    /// Stores `bytes` as a new file.
    pub fn put(
        &self,
        id: &str,
        filename: &str,
        purpose: &str,
        bytes: &[u8],
        key: Option<&str>,
    ) -> std::io::Result<FileObject> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.data_path(id).ok_or_else(|| std::io::Error::other("bad file id"))?;
        write_atomic(&path, bytes)?;
        self.commit(id, filename, purpose, key)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file, if `key` may see it (`None`: open mode, or the gateway itself).
    pub fn get(&self, id: &str, key: Option<&str>) -> Option<FileObject> {
        if !valid_id(id) {
            return None;
        }
        let s: Stored = serde_json::from_slice(&std::fs::read(self.meta_path(id)).ok()?).ok()?;
        (key.is_none() || s.key.as_deref() == key).then_some(s.file)
    }

    /// Newest first.
    pub fn list(&self, purpose: Option<&str>, key: Option<&str>) -> Vec<FileObject> {
        let mut out: Vec<FileObject> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice::<Stored>(&std::fs::read(e.path()).ok()?).ok())
            .filter(|s| key.is_none() || s.key.as_deref() == key)
            .map(|s| s.file)
            .filter(|f| purpose.is_none_or(|p| f.purpose == p))
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        out
    }

    pub fn delete(&self, id: &str, key: Option<&str>) -> bool {
        if self.get(id, key).is_none() {
            return false;
        }
        let _ = std::fs::remove_file(self.meta_path(id));
        if let Some(p) = self.data_path(id) {
            let _ = std::fs::remove_file(p);
        }
        true
    }
}
