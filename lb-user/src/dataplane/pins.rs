//! Where things live on bpffs: maps directly under the pin path (so
//! `bpftool map dump pinned /sys/fs/bpf/lb/LB_SERVICES` works) and links under
//! `links/<hook>/<ifname>` (bpffs reserves dots in names, so no `eth0.xdp`).
use std::{
    ffi::CString,
    fs, io,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use thiserror::Error;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Hooks with a directory of pinned links each.
pub const HOOKS: [&str; 2] = ["xdp", "tc"];

#[derive(Debug, Error)]
pub enum PinError {
    #[error("creating pin directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("{path} is not on a bpf filesystem and bpffs could not be mounted there")]
    NotBpffs { path: PathBuf },
    #[error(
        "{path} belongs to uid {owner}, not to this user (uid {me}): refusing to adopt or \
         write another user's pins"
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("making {path} private: {source}")]
    Permissions { path: PathBuf, source: io::Error },
}

/// Refuses a pin (directory or map) that another user owns: its maps would steer this
/// agent's traffic, so only their owner may hand them over.
pub fn check_owner(path: &Path, me: u32) -> Result<(), PinError> {
    match fs::metadata(path) {
        Ok(m) if m.uid() != me => Err(PinError::ForeignOwner {
            path: path.to_owned(),
            owner: m.uid(),
            me,
        }),
        _ => Ok(()),
    }
}

/// This process's effective user.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Root-only: `0o700` for directories, `0o600` for pinned objects and files.
pub fn make_private(path: &Path, mode: u32) -> Result<(), PinError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        PinError::Permissions {
            path: path.to_owned(),
            source,
        }
    })
}

#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// `links/<hook>/<ifname>`: one pinned link per interface and hook.
    pub fn link(&self, ifname: &str, hook: &str) -> PathBuf {
        self.links_dir().join(hook).join(ifname)
    }

    /// Pinned links as (interface name, hook, path).
    pub fn pinned_links(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        for hook in HOOKS {
            let Ok(dir) = fs::read_dir(self.links_dir().join(hook)) else {
                continue;
            };
            for e in dir.filter_map(Result::ok) {
                out.push((
                    e.file_name().to_string_lossy().into_owned(),
                    hook.to_string(),
                    e.path(),
                ));
            }
        }
        out.sort();
        out
    }

    /// True when anything of ours is pinned here.
    pub fn exists(&self) -> bool {
        self.map(lb_common::MAP_SERVICES).exists()
    }

    /// Makes sure the pin path is a directory on bpffs (mounting one there if needed) that
    /// this user owns, with every map already pinned there ours too. What this creates is
    /// root-only (`0o700`); a directory that already exists keeps its mode (it may be
    /// bpffs's own root, shared with other programs).
    pub fn ensure(&self) -> Result<(), PinError> {
        let root = &self.root;
        let me = euid();
        check_owner(root, me)?;
        create_private(root)?;
        if !is_bpffs(root) {
            mount_bpffs(root)?;
        }
        for name in lb_common::ALL_MAPS {
            check_owner(&self.map(name), me)?;
        }
        for dir in [self.links_dir()]
            .into_iter()
            .chain(HOOKS.iter().map(|h| self.links_dir().join(h)))
        {
            check_owner(&dir, me)?;
            create_private(&dir)?;
        }
        Ok(())
    }

    /// Narrows the pinned maps to their owner (`0o600`): they hold every client's flows.
    pub fn make_maps_private(&self) -> Result<(), PinError> {
        lb_common::ALL_MAPS
            .iter()
            .try_for_each(|name| make_private(&self.map(name), 0o600))
    }
}

/// Creates `dir` (and its parents) if missing, the last one root-only.
fn create_private(dir: &Path) -> Result<(), PinError> {
    if dir.exists() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|source| PinError::Create {
        path: dir.to_owned(),
        source,
    })?;
    make_private(dir, 0o700)
}

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs(path: &Path) -> Result<(), PinError> {
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|_| PinError::NotBpffs {
        path: path.to_owned(),
    })?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    if !is_bpffs(path) {
        return Err(PinError::NotBpffs {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_users_pins_are_refused_and_ours_made_private() {
        let dir = std::env::temp_dir().join(format!("lb-pins-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let me = euid();
        check_owner(&dir, me).unwrap();
        let e = check_owner(&dir, me + 1).unwrap_err().to_string();
        assert!(
            e.contains("belongs to uid") && e.contains("refusing"),
            "{e}"
        );
        check_owner(&dir.join("absent"), me + 1).expect("nothing there yet: nothing to refuse");
        make_private(&dir, 0o700).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
