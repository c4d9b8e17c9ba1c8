//! Reading a plugin from disk without trusting what is there.
//!
//! A load asked for over the client port names a file in `plugins.dir`,
//! never a path: otherwise any client could probe which files exist, read
//! the first bytes of `/etc/shadow` through an error message, grow Rampart
//! without bound from `/dev/zero` or pin a thread on a FIFO. Paths written
//! in the configuration file are the operator's and are read as given, but
//! through the same checks: a regular file, at most [`MAX_PLUGIN_BYTES`],
//! starting with the WebAssembly magic. No error quotes the file's bytes.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::PolicyError;

/// The largest plugin Rampart reads (the admin API's upload cap too).
pub const MAX_PLUGIN_BYTES: usize = 64 * 1024 * 1024;

/// Every WebAssembly binary, module or component, starts with these.
const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Where a plugin named over the client port lives: `name` must be a plain
/// file name (no directory part, not hidden) inside `dir`.
pub fn resolve(dir: Option<&str>, name: &str) -> Result<PathBuf, PolicyError> {
    let Some(dir) = dir else {
        return Err(PolicyError::Refused(
            "loading plugin files over the client port needs plugins.dir in the configuration \
             (or upload the .wasm over the admin API)"
                .into(),
        ));
    };
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).file_name().is_some();
    if !plain {
        return Err(PolicyError::Refused(format!(
            "'{name}' is not a plugin name: give the file name of a .wasm in plugins.dir, not a path"
        )));
    }
    Ok(Path::new(dir).join(name))
}

/// The bytes of the plugin at `path`, refused unless it is a regular file
/// of at most [`MAX_PLUGIN_BYTES`] holding WebAssembly. `shown` names it in
/// errors (the name the user gave, so a refused load reveals no more of
/// the file system than the user already knew).
pub fn read(path: &Path, shown: &str) -> Result<Vec<u8>, PolicyError> {
    let unreadable =
        |why: String| PolicyError::Refused(format!("cannot read plugin {shown}: {why}"));
    let mut file = open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            PolicyError::NotFound(format!("cannot read plugin {shown}: no such file"))
        }
        std::io::ErrorKind::PermissionDenied => unreadable("permission denied".into()),
        _ => unreadable(e.to_string()),
    })?;
    let metadata = file.metadata().map_err(|e| unreadable(e.to_string()))?;
    if !metadata.is_file() {
        return Err(unreadable("not a regular file".into()));
    }
    if metadata.len() > MAX_PLUGIN_BYTES as u64 {
        return Err(too_large(shown));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // `take` as well as the length check: the file may grow between the
    // two, and a cap that holds only if nobody writes is no cap.
    (&mut file)
        .take(MAX_PLUGIN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() > MAX_PLUGIN_BYTES {
        return Err(too_large(shown));
    }
    check_magic(&bytes, shown)?;
    Ok(bytes)
}

/// Refuses bytes that are not WebAssembly before the compiler sees them:
/// its error would quote them.
pub fn check_magic(bytes: &[u8], shown: &str) -> Result<(), PolicyError> {
    if bytes.starts_with(WASM_MAGIC) {
        Ok(())
    } else {
        Err(PolicyError::Refused(format!(
            "{shown} is not a WebAssembly component (it does not start with \\0asm)"
        )))
    }
}

fn too_large(shown: &str) -> PolicyError {
    PolicyError::Refused(format!(
        "cannot read plugin {shown}: larger than {} MiB",
        MAX_PLUGIN_BYTES / 1024 / 1024
    ))
}

/// Opens without blocking: opening a FIFO for reading waits for a writer,
/// which would pin the loading thread forever. The flag is harmless on a
/// regular file, and anything else is refused once opened.
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    /// `O_NONBLOCK` on Linux (every architecture Rampart builds for).
    const O_NONBLOCK: i32 = 0o4000;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only() {
        let dir = Some("/srv/plugins");
        assert_eq!(
            resolve(dir, "router.wasm").unwrap(),
            PathBuf::from("/srv/plugins/router.wasm")
        );
        for bad in ["/etc/shadow", "../x.wasm", "a/b.wasm", ".hidden", "", ".."] {
            assert!(resolve(dir, bad).is_err(), "{bad}");
        }
        assert!(resolve(None, "router.wasm").is_err());
    }

    #[test]
    fn refuses_what_is_not_a_small_regular_wasm_file() {
        let dir = std::env::temp_dir().join(format!("rampart-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("secret.txt");
        std::fs::write(&text, "root:$6$secret").unwrap();
        let error = read(&text, "secret.txt").unwrap_err().to_string();
        assert!(!error.contains("root"), "{error}");
        let refused = |path: &Path| read(path, "it").unwrap_err();
        assert!(
            matches!(refused(Path::new("/dev/zero")), PolicyError::Refused(e) if e.contains("not a regular file"))
        );
        assert!(
            matches!(refused(&dir), PolicyError::Refused(e) if e.contains("not a regular file"))
        );
        assert!(
            matches!(refused(&dir.join("missing")), PolicyError::NotFound(e) if e.contains("no such file"))
        );
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.map(|s| s.success()).unwrap_or(false) {
            assert!(refused(&fifo).to_string().contains("not a regular file"));
        }
        let wasm = dir.join("ok.wasm");
        std::fs::write(&wasm, b"\0asm\x0d\0\x01\0").unwrap();
        assert!(read(&wasm, "ok.wasm").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
