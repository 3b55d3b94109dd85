//! What /proc says about one process and the processes below it: their memory, their
//! children, whether a process is stopped. Each question reads only the processes it is
//! about, never the whole of /proc: the cost follows a worker's own tree, not the host.

use procfs::process::{Process, Stat};

use nix::unistd::Pid;

/// Memory of a process and the processes below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeMemory {
    /// Resident memory of the whole tree, in bytes.
    pub rss: u64,
    /// The root process's own address space (VmSize), in bytes: what RLIMIT_AS caps.
    pub address_space: u64,
}

/// Most processes walked in one tree: a fork bomb cannot make the master's walk endless.
const MAX_TREE: usize = 4096;

/// Memory of `root` alone (`with_descendants` false) or of `root` and every process below
/// it. None when `root` is gone; processes that end during the walk count for nothing.
pub fn memory(root: Pid, with_descendants: bool) -> Option<TreeMemory> {
    let page = procfs::page_size();
    let process = Process::new(root.as_raw()).ok()?;
    let statm = process.statm().ok()?;
    let mut total = TreeMemory {
        rss: statm.resident.saturating_mul(page),
        address_space: statm.size.saturating_mul(page),
    };
    if with_descendants {
        let mut pending = children_of(&process);
        let mut seen = 0;
        while let Some(pid) = pending.pop() {
            seen += 1;
            if seen > MAX_TREE {
                break;
            }
            let Ok(process) = Process::new(pid.as_raw()) else {
                continue;
            };
            if let Ok(statm) = process.statm() {
                total.rss = total
                    .rss
                    .saturating_add(statm.resident.saturating_mul(page));
            }
            pending.extend(children_of(&process));
        }
    }
    Some(total)
}

/// The children of `pid` (of each of its threads); empty when it is gone.
pub fn children(pid: Pid) -> Vec<Pid> {
    Process::new(pid.as_raw())
        .map(|process| children_of(&process))
        .unwrap_or_default()
}

fn children_of(process: &Process) -> Vec<Pid> {
    let Ok(tasks) = process.tasks() else {
        return Vec::new();
    };
    let mut children: Vec<Pid> = tasks
        .flatten()
        .filter_map(|task| task.children().ok())
        .flatten()
        .filter_map(|child| i32::try_from(child).ok().map(Pid::from_raw))
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}

/// The state letter of `pid` (`T` stopped, `t` stopped by a debugger, `S`, `R`, `D`, ...);
/// None when it is gone.
pub fn state(pid: Pid) -> Option<char> {
    stat(pid).map(|stat| stat.state)
}

/// Whether a state letter means the process cannot run until someone resumes it.
pub fn is_stopped(state: char) -> bool {
    matches!(state, 'T' | 't')
}

/// The command name of `pid` (`sleep`), for log lines.
pub fn command_name(pid: Pid) -> Option<String> {
    stat(pid).map(|stat| stat.comm)
}

/// The parent of `pid` and the process group it is in, as the kernel has them now; None
/// when it is gone.
pub fn lineage(pid: Pid) -> Option<Lineage> {
    stat(pid).map(|stat| Lineage {
        parent: Pid::from_raw(stat.ppid),
        group: Pid::from_raw(stat.pgrp),
    })
}

/// The processes below `root` that stayed in its process group, parents before children (a
/// preload template's spare pair: the jobs and workers it forks move to groups of their
/// own). Bounded as [`memory`]'s walk is.
pub fn same_group_below(root: Pid) -> Vec<Pid> {
    let Some(group) = lineage(root).map(|lineage| lineage.group) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut pending = children(root);
    pending.reverse();
    while let Some(pid) = pending.pop() {
        if found.len() >= MAX_TREE {
            break;
        }
        if lineage(pid).is_some_and(|lineage| lineage.group == group) {
            found.push(pid);
            let mut below = children(pid);
            below.reverse();
            pending.extend(below);
        }
    }
    found
}

/// How long ago `pid` started; None when it is gone.
pub fn started_ago(pid: Pid) -> Option<std::time::Duration> {
    use procfs::Current;
    let started = stat(pid)?.starttime as f64 / procfs::ticks_per_second() as f64;
    let uptime = procfs::Uptime::current().ok()?.uptime;
    std::time::Duration::try_from_secs_f64(uptime - started).ok()
}

/// Where a process sits: its parent, and its process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lineage {
    pub parent: Pid,
    pub group: Pid,
}

fn stat(pid: Pid) -> Option<Stat> {
    Process::new(pid.as_raw()).ok()?.stat().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_counts_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = nix::unistd::getpid();
        let child_pid = Pid::from_raw(child.id() as i32);
        assert!(children(me).contains(&child_pid));
        let alone = memory(me, false).unwrap();
        let tree = memory(me, true).unwrap();
        assert!(tree.rss > alone.rss, "{tree:?} vs {alone:?}");
        assert!(alone.address_space >= alone.rss);
        assert!(!is_stopped(state(child_pid).unwrap()));
        assert_eq!(command_name(child_pid).as_deref(), Some("sleep"));
        assert_eq!(lineage(child_pid).map(|lineage| lineage.parent), Some(me));
        assert!(same_group_below(me).contains(&child_pid));
        assert!(started_ago(child_pid).unwrap() < std::time::Duration::from_secs(60));
        let mut alone = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::process_group(&mut alone, 0);
        let mut alone = alone.arg("30").spawn().unwrap();
        let alone_pid = Pid::from_raw(alone.id() as i32);
        assert!(!same_group_below(me).contains(&alone_pid));
        alone.kill().unwrap();
        alone.wait().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(memory(child_pid, true), None);
    }
}
