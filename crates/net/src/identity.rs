//! The node's libp2p identity: a secp256k1 key kept in the data directory.
//!
//! The reference node can parse no other key type (it is built with
//! `libp2p_pki_schemes=secp256k1`), so cairn always uses secp256k1. The key file has the
//! reference's format — the libp2p protobuf `PrivateKey` (`08 02` = secp256k1, then the 32 raw
//! key bytes) — so a data directory's key can move between the two implementations. It is
//! created on first start, written to a temporary file with owner-only permissions and renamed
//! into place; an existing key file that others can read is refused, as the reference refuses
//! it.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a libp2p secp256k1 private key.
    #[error("key file {path} is not a libp2p secp256k1 private key: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Group or others may access the file.
    #[error(
        "key file {path} has permissions {mode:o}; it must be readable by its owner only \
         (chmod 600 {path})"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Loads the key at `path`, or creates one there if the file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<Keypair, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::read(path) {
        Ok(bytes) => {
            check_permissions(path)?;
            let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| KeyError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            if key.clone().try_into_secp256k1().is_err() {
                return Err(KeyError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!(
                        "key type {:?}; the reference accepts secp256k1 only",
                        key.key_type()
                    ),
                });
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = Keypair::generate_secp256k1();
            let bytes = key.to_protobuf_encoding().map_err(|e| KeyError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            write_private(path, &bytes).map_err(io_err)?;
            Ok(key)
        }
        Err(e) => Err(io_err(e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    // A name of our own, created new: an existing file there (left over, or someone else's,
    // with its own permissions, or a symlink) is never written through. Before, the key went
    // into `<name>.tmp` whatever was there, keeping that file's mode (found by review).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = path
        .file_name()
        .map_or_else(|| "key".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}-{nanos}.tmp", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    let written = (|| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(bytes)?;
        f.sync_all()
    })();
    drop(f);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_reloaded_same_and_in_reference_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let bytes = fs::read(&path).unwrap();
        // libp2p PrivateKey protobuf: field 1 = 2 (secp256k1), field 2 = 32 bytes.
        assert_eq!(&bytes[..4], &[0x08, 0x02, 0x12, 0x20]);
        assert_eq!(bytes.len(), 36);
        // PeerIds of secp256k1 keys start with 16Uiu2HAm (codex-protocol.md §1).
        assert!(a.public().to_peer_id().to_string().starts_with("16Uiu2HA"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[cfg(unix)]
    /// A file already at the old temporary name (`<name>.tmp`, another user's, readable by
    /// all) is neither written through nor renamed into place: the key is created 0600.
    #[test]
    fn a_file_at_the_temporary_name_is_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let decoy = dir.path().join("node.tmp");
        fs::write(&decoy, b"someone's notes").unwrap();
        fs::set_permissions(&decoy, fs::Permissions::from_mode(0o644)).unwrap();
        let key = load_or_create_key(&path).unwrap();
        assert_eq!(fs::read(&decoy).unwrap(), b"someone's notes");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_or_create_key(&path).unwrap().public(),
            key.public(),
            "the key reads back"
        );
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "a temporary file was left behind");
    }

    #[test]
    fn readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        load_or_create_key(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(KeyError::Permissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn other_key_types_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_private(
            &path,
            &Keypair::generate_ed25519().to_protobuf_encoding().unwrap(),
        )
        .unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(KeyError::Invalid { .. })
        ));
        write_private(&path, b"garbage").unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(KeyError::Invalid { .. })
        ));
    }
}
