//! What "the model" is, as files: a folder, a single file (a `.gguf`, or any one artifact), or a hub id resolved in
//! the local Hugging Face cache — optionally with a PEFT adapter folder. Every file is listed with a stable logical
//! path (`/`-separated, relative; adapter files under `adapter/`), which is what findings, lock files and the root
//! digest name.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::AuditError;

/// Most files listed per model (a folder with more is refused rather than half-audited).
pub const MAX_FILES: usize = 100_000;
const MAX_DEPTH: usize = 32;

/// How the model was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Folder,
    File,
    Hub,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Folder => "folder",
            ModelKind::File => "file",
            ModelKind::Hub => "hub",
        }
    }
}

/// A model's files on disk.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFiles {
    /// As the user wrote it (path or hub id).
    pub spec: String,
    pub kind: ModelKind,
    /// The folder, or the single file.
    pub root: PathBuf,
    /// For hub ids: the commit sha the cache resolved the revision to.
    pub revision: Option<String>,
    /// A PEFT adapter folder applied on top.
    pub adapter: Option<PathBuf>,
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ModelFile {
    /// Logical path: relative, `/`-separated, `adapter/…` for adapter files.
    pub path: String,
    pub abs: PathBuf,
}

impl ModelFiles {
    /// Resolve a command-line model argument: an existing path (folder or file), else a hub id `org/name[@rev]`
    /// looked up in the local cache (trapdoor never downloads).
    pub fn resolve(spec: &str) -> Result<Self, AuditError> {
        let p = Path::new(spec);
        if p.exists() {
            return Self::from_path(p).map(|mut m| {
                m.spec = spec.to_string();
                m
            });
        }
        if crate::runtime::hub::is_hub_id(spec) {
            return Self::from_hub(spec);
        }
        Err(AuditError::Model { spec: spec.to_string(), reason: "no such file or directory".into() })
    }

    /// A folder or a single file.
    pub fn from_path(p: &Path) -> Result<Self, AuditError> {
        let meta = std::fs::metadata(p).map_err(|e| AuditError::Model { spec: p.display().to_string(), reason: e.to_string() })?;
        let kind = if meta.is_dir() { ModelKind::Folder } else { ModelKind::File };
        Ok(ModelFiles { spec: p.display().to_string(), kind, root: p.to_path_buf(), revision: None, adapter: None })
    }

    /// `org/name` or `org/name@revision` from the local cache, resolved by [`crate::runtime::hub`] (the same rules
    /// the loader uses: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`; a ref name or a full
    /// commit sha; every file must resolve inside the repository's cache folder). The commit sha is recorded.
    pub fn from_hub(spec: &str) -> Result<Self, AuditError> {
        let snap = crate::runtime::hub::resolve(spec, &crate::runtime::hub::HubOptions::default())
            .map_err(|e| AuditError::Model { spec: spec.to_string(), reason: e.to_string() })?;
        snap.verify().map_err(|e| AuditError::Model { spec: spec.to_string(), reason: e.to_string() })?;
        Ok(ModelFiles { spec: spec.to_string(), kind: ModelKind::Hub, root: snap.dir, revision: Some(snap.commit), adapter: None })
    }

    /// Add a PEFT adapter folder.
    pub fn with_adapter(mut self, dir: &Path) -> Result<Self, AuditError> {
        if !dir.is_dir() {
            return Err(AuditError::Model { spec: dir.display().to_string(), reason: "adapter is not a folder".into() });
        }
        self.adapter = Some(dir.to_path_buf());
        Ok(self)
    }

    /// Every file, sorted by logical path.
    pub fn files(&self) -> Result<Vec<ModelFile>, AuditError> {
        let mut out = Vec::new();
        match self.kind {
            ModelKind::File => {
                let name = self.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
                out.push(ModelFile { path: name, abs: self.root.clone() });
            }
            ModelKind::Folder | ModelKind::Hub => walk(&self.root, "", 0, &mut out)?,
        }
        if let Some(a) = &self.adapter {
            walk(a, "adapter/", 0, &mut out)?;
        }
        out.sort();
        Ok(out)
    }

    /// The folder that holds config/tokenizer files (the file's folder for a single file is *not* used: a single
    /// file is the whole model).
    pub fn folder(&self) -> Option<&Path> {
        match self.kind {
            ModelKind::File => None,
            _ => Some(&self.root),
        }
    }
}

/// Recursive listing. `.git` and huggingface_hub's `.cache/huggingface` download metadata are not model files and are
/// skipped; symlinks to files are followed (hub snapshots are symlinks into `blobs/`), symlinks to folders are not.
fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<ModelFile>) -> Result<(), AuditError> {
    let io = |e: std::io::Error| AuditError::Io { path: dir.to_path_buf(), source: e };
    if depth > MAX_DEPTH {
        return Err(AuditError::Model { spec: dir.display().to_string(), reason: format!("folders nested deeper than {MAX_DEPTH}") });
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io)?.collect::<Result<_, _>>().map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let logical = format!("{prefix}{name}");
        let ft = e.file_type().map_err(io)?;
        if ft.is_dir() {
            if name == ".git" || (depth == 1 && logical.ends_with(".cache/huggingface")) {
                continue;
            }
            walk(&e.path(), &format!("{logical}/"), depth + 1, out)?;
        } else if ft.is_symlink() {
            // Follow to files only.
            match std::fs::metadata(e.path()) {
                Ok(m) if m.is_file() => out.push(ModelFile { path: logical, abs: e.path() }),
                Ok(_) => {}
                Err(_) => out.push(ModelFile { path: logical, abs: e.path() }), // dangling: reported as unreadable
            }
        } else {
            out.push(ModelFile { path: logical, abs: e.path() });
        }
        if out.len() > MAX_FILES {
            return Err(AuditError::Model { spec: dir.display().to_string(), reason: format!("more than {MAX_FILES} files") });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognised() {
        use crate::runtime::hub::is_hub_id;
        assert!(is_hub_id("google/gemma-3-270m"));
        assert!(is_hub_id("org/name@v1.0"));
        assert!(!is_hub_id("./x/y") && !is_hub_id("a/b/c") && !is_hub_id("x") && !is_hub_id("org/m@../x"));
    }

    #[test]
    fn folders_list_sorted_with_adapter_prefix_and_skip_git() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("m/sub")).unwrap();
        std::fs::create_dir_all(d.path().join("m/.git")).unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        for f in ["m/b.json", "m/a.bin", "m/sub/c.txt", "m/.git/HEAD", "a/adapter_config.json"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let m = ModelFiles::from_path(&d.path().join("m")).unwrap().with_adapter(&d.path().join("a")).unwrap();
        let names: Vec<String> = m.files().unwrap().into_iter().map(|f| f.path).collect();
        assert_eq!(names, vec!["a.bin", "adapter/adapter_config.json", "b.json", "sub/c.txt"]);
    }

    #[test]
    fn hub_cache_resolution_records_the_commit() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--org--m");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(sha)).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{sha}\n")).unwrap();
        std::fs::write(repo.join("snapshots").join(sha).join("config.json"), b"{}").unwrap();
        // The environment is process-wide; this is the only test in the crate that sets HF_HUB_CACHE.
        std::env::set_var("HF_HUB_CACHE", d.path());
        let m = ModelFiles::resolve("org/m").unwrap();
        assert_eq!(m.revision.as_deref(), Some(sha));
        assert_eq!(m.kind, ModelKind::Hub);
        let m2 = ModelFiles::resolve(&format!("org/m@{sha}")).unwrap();
        assert_eq!(m2.root, m.root);
        let e = ModelFiles::resolve("org/absent").unwrap_err().to_string();
        assert!(e.contains("org/absent") && e.contains("offline by default"), "{e}");
        let e = ModelFiles::resolve("org/m@nope").unwrap_err().to_string();
        assert!(e.contains("refs/nope"), "{e}");
        std::env::remove_var("HF_HUB_CACHE");
    }
}
