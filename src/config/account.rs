//! `user` and `group`: the account every worker, program and cron job runs as, resolved
//! from the system's user and group databases when the config is read, so that a name that
//! does not exist is a config error and never a worker left running as root.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

/// An account resolved from `user` (and `group`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: Uid,
    /// `group`'s id, or the user's primary group.
    pub gid: Gid,
    /// Every group the user belongs to (its supplementary groups and `gid`).
    pub groups: Vec<Gid>,
    /// The user's home directory, for `HOME` in programs and jobs.
    pub home: PathBuf,
}

impl RunAs {
    /// Who file operations in the workers' places (their log, data_dir) are done as, when
    /// this process is root: the workers' user, so that nothing a worker planted there can
    /// turn root's privilege against the host. None when this process already runs as
    /// that user (it cannot switch, and need not).
    pub fn fs_identity(&self) -> Option<crate::sys::FsIdentity> {
        (nix::unistd::geteuid().is_root() && !self.uid.is_root()).then(|| crate::sys::FsIdentity {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        })
    }

    /// Resolves `user` and `group`; on failure, the key to blame and what is wrong.
    pub fn resolve(
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<Option<Self>, (&'static str, String)> {
        let Some(name) = user else {
            return match group {
                Some(_) => Err((
                    "group",
                    "group needs user: set user to the account workers run as".into(),
                )),
                None => Ok(None),
            };
        };
        let account = User::from_name(name)
            .map_err(|errno| ("user", format!("cannot look up user {name:?}: {errno}")))?
            .ok_or_else(|| {
                (
                    "user",
                    format!(
                        "no user {name:?} on this system; workers are never left running as \
                         root: create it or fix the name"
                    ),
                )
            })?;
        let gid = match group {
            None => account.gid,
            Some(group) => {
                Group::from_name(group)
                    .map_err(|errno| ("group", format!("cannot look up group {group:?}: {errno}")))?
                    .ok_or_else(|| ("group", format!("no group {group:?} on this system")))?
                    .gid
            }
        };
        let c_name = CString::new(name).map_err(|_| ("user", format!("bad user name {name:?}")))?;
        let mut groups = getgrouplist(&c_name, gid).map_err(|errno| {
            (
                "user",
                format!("cannot read the groups of user {name:?}: {errno}"),
            )
        })?;
        groups.sort_unstable_by_key(|group| group.as_raw());
        groups.dedup();
        Ok(Some(Self {
            user: name.to_string(),
            uid: account.uid,
            gid,
            groups,
            home: account.dir,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_user_is_resolved_and_a_missing_one_refused() {
        let root = RunAs::resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!((root.uid.as_raw(), root.gid.as_raw()), (0, 0));
        assert!(root.groups.contains(&Gid::from_raw(0)));
        let missing = RunAs::resolve(Some("no-such-user-forkwarden"), None).unwrap_err();
        assert_eq!(missing.0, "user");
        assert!(missing.1.contains("no user"), "{}", missing.1);
        assert_eq!(RunAs::resolve(None, Some("root")).unwrap_err().0, "group");
        assert_eq!(RunAs::resolve(None, None).unwrap(), None);
    }
}
