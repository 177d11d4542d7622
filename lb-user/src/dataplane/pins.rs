//! Where things live on bpffs: maps directly under the pin path (so
//! `bpftool map dump pinned /sys/fs/bpf/lb/LB_SERVICES` works) and links under
//! `links/<hook>/<ifname>` (bpffs reserves dots in names, so no `eth0.xdp`).
use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
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

    /// Makes sure the pin path is a directory on bpffs, mounting one there if needed.
    pub fn ensure(&self) -> Result<(), PinError> {
        let root = &self.root;
        fs::create_dir_all(root).map_err(|source| PinError::Create {
            path: root.clone(),
            source,
        })?;
        if !is_bpffs(root) {
            mount_bpffs(root)?;
        }
        for hook in HOOKS {
            let dir = self.links_dir().join(hook);
            fs::create_dir_all(&dir).map_err(|source| PinError::Create { path: dir, source })?;
        }
        Ok(())
    }
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
            std::ptr::null(),
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
