//! The node's cache directory: the last good snapshot (the proto bytes, the planes' versioned
//! contract, so a node upgraded between two runs still reads it) and the node's stable id.
//!
//! Writes are atomic (temp file, fsync, rename, fsync of the directory) and private (0600):
//! the snapshot holds the upstream credentials.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use prost::Message;
use switchyard_proto::v1 as pb;

const SNAPSHOT_FILE: &str = "snapshot.pb";
const NODE_ID_FILE: &str = "node-id";

#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating it, private to this user) the cache directory.
    pub(crate) fn open(dir: &Path) -> io::Result<Cache> {
        fs::create_dir_all(dir)?;
        let mut perms = fs::metadata(dir)?.permissions();
        if perms.mode() & 0o077 != 0 {
            perms.set_mode(0o700);
            // Best effort: a directory owned by someone else keeps its mode.
            let _ = fs::set_permissions(dir, perms);
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    pub(crate) fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// The cached snapshot: `Ok(None)` when there is none, `Err` when it is unreadable.
    pub(crate) fn load_snapshot(&self) -> Result<Option<pb::Snapshot>, String> {
        let bytes = match fs::read(self.snapshot_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        pb::Snapshot::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| format!("cannot decode: {e}"))
    }

    pub(crate) fn store_snapshot(&self, snapshot: &pb::Snapshot) -> io::Result<()> {
        write_atomic(&self.dir, SNAPSHOT_FILE, &snapshot.encode_to_vec())
    }

    /// The node id kept in the cache directory, created once.
    pub(crate) fn node_id(&self) -> io::Result<String> {
        let path = self.dir.join(NODE_ID_FILE);
        match fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let id = uuid::Uuid::new_v4().to_string();
        write_atomic(&self.dir, NODE_ID_FILE, id.as_bytes())?;
        Ok(id)
    }
}

/// Writes `name` in `dir` atomically. The temporary file is created fresh (`O_EXCL`: never
/// an existing file, nor a symlink planted at its name; `O_NOFOLLOW` too) with mode 0600
/// from its creation, under an unpredictable name.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut file = create_private(&tmp)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file only its owner can read, failing if anything (a file, a symlink) is
/// already at `path`.
fn create_private(path: &Path) -> io::Result<fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_or_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "precious").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_private(&link).is_err());
        assert!(create_private(&target).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        let fresh = dir.path().join("fresh");
        drop(create_private(&fresh).unwrap());
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn snapshot_round_trip_is_private_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c")).unwrap();
        assert_eq!(cache.load_snapshot().unwrap(), None);
        let snap = pb::Snapshot {
            gateway: "gw".into(),
            version: 4,
            proxies: vec![],
            created_at_unix_ms: 1,
            semantic_services: vec![],
            topics: vec![],
            ..Default::default()
        };
        cache.store_snapshot(&snap).unwrap();
        assert_eq!(cache.load_snapshot().unwrap(), Some(snap));
        let mode = fs::metadata(cache.snapshot_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("c"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());

        fs::write(cache.snapshot_path(), b"\xff\xff garbage").unwrap();
        assert!(cache.load_snapshot().is_err());
    }

    #[test]
    fn node_id_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let a = cache.node_id().unwrap();
        let b = Cache::open(dir.path()).unwrap().node_id().unwrap();
        assert_eq!(a, b);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
