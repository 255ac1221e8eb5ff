//! What a localkube that needs root (k3s) shares with the whole machine,
//! whatever its data directory: `/run/k3s/containerd` (k3s
//! pkg/agent/config/config_linux.go), `/var/lib/kubelet`, `/etc/rancher/node`,
//! `/run/flannel`, `/var/lib/cni`, the `cni0` and `flannel.1` links, the
//! KUBE-/CNI-/FLANNEL iptables chains and the kubelet's, kube-proxy's and
//! controllers' ports (10250, 10248, 10249, 10256, 10257, 10259, 10010, the
//! API port + 1). Two of them cannot share a machine, and k3s leaves all of
//! it behind when it exits: shims and pods run on by design, and k3s's
//! install.sh writes `k3s-killall.sh` to clean up after it.
//!
//! So one native profile at a time holds the machine ([`Record::claim`], in
//! `/var/lib/kubestrap/native-k3s.toml` under a lock): a second one is
//! refused before anything is fetched. `stop` does what k3s-killall.sh does
//! (the profile's processes and their whole trees are ended by the stop
//! itself), for the profile holding the machine only: unmounts what is
//! under /run/k3s, /var/lib/kubelet/pods and plugins, /run/netns/cni-* and
//! its data directory, deletes the pods' links, cni0, flannel.1,
//! flannel-v6.1 and the profile's node link, removes /var/lib/cni,
//! /run/flannel and /run/k3s, the KUBE-/CNI-/FLANNEL chains and the rules
//! that jump to them (the rest of the tables untouched), and empty
//! `kubepods` cgroups — and says exactly what it could not remove. `delete`
//! of the last profile that ran one removes the machine-wide paths a
//! kubestrap's k3s created (/etc/rancher/node, /var/lib/kubelet, ...), never
//! ones that were there before.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kubestrap_fskit as fskit;
use serde::{Deserialize, Serialize};

use super::node::{CNI_BRIDGE, NodeNet, Tools};
use crate::driver::supervisor::process::{self, boot_id, marker_value};
use crate::driver::{Check, DriverError, Gate, Result};
use crate::profile::Profile;
use crate::state::{read as read_state, write as write_state};

/// Where the record of the machine's native k3s lives (root's).
const STATE_DIR: &str = "/var/lib/kubestrap";

/// Paths k3s creates on the machine that outlive a stop.
/// (The kubelet's pod logs too: `/var/log/pods` is fixed in the kubelet.)
const PERSISTENT: &[&str] = &[
    "/etc/rancher/node",
    "/var/lib/kubelet",
    "/var/lib/rancher",
    "/etc/rancher",
    "/var/log/pods",
    "/var/log/containers",
];
/// Where k3s's containerd, kubelet and CNI plugins mount (k3s-killall.sh),
/// and the development localkube's containerd (`/run/localkube`). The
/// kubelet also bind-mounts `/var/lib/kubelet` onto itself when `/` is not
/// a shared mount, to make it one: the whole tree.
const MOUNTS: &[&str] = &["/run/k3s", "/run/localkube", "/var/lib/kubelet", "/run/netns/cni-"];
/// Runtime state a stopped k3s (or the development localkube) leaves.
const RUNTIME_DIRS: &[&str] = &["/var/lib/cni", "/run/flannel", "/run/k3s", "/run/localkube"];
/// Kernel settings k3s and its kubelet and kube-proxy change for the whole
/// machine (k3s pkg/agent/syssetup; the kubelet's kernel tunables;
/// kube-proxy's route_localnet): their values before the first native k3s
/// are recorded, and the last `delete` puts back the ones still changed.
/// IP forwarding is left as it is: Docker, libvirt and VPNs set and need it
/// too, and turning it off would cut them off.
const SYSCTLS: &[&str] = &[
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}

fn read_sysctl(name: &str) -> Option<String> {
    fskit::read_capped_text(&sysctl_path(name), 4096).ok().map(|v| v.trim().to_string())
}

/// The links flannel, the CNI bridge and kube-proxy's IPVS mode make.
const LINKS: &[&str] = &[CNI_BRIDGE, "flannel.1", "flannel-v6.1", "kube-ipvs0", "flannel-wg", "flannel-wg-v6"];

/// The profile whose localkube holds the machine now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Claim {
    pub profile: String,
    /// The profile's directory (it names the home too).
    pub dir: PathBuf,
    /// Its run directory's marker value: its processes carry it.
    pub run: PathBuf,
    pub boot: String,
}

impl Claim {
    fn of(p: &Profile) -> Claim {
        Claim { profile: p.name.clone(), dir: p.dir.clone(), run: marker_value(&p.run()), boot: boot_id() }
    }
    /// Whether its localkube (or anything of it) still runs.
    fn live(&self) -> bool {
        self.boot == boot_id() && !process::owned_by(&self.run).is_empty()
    }
    fn describe(&self) -> String {
        let home = self.dir.parent().and_then(Path::parent).unwrap_or(&self.dir);
        format!("profile {:?} (home {})", self.profile, home.display())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Record {
    claim: Option<Claim>,
    /// Profiles (their directories) that ran a native k3s and still exist.
    #[serde(default)]
    users: BTreeSet<PathBuf>,
    /// Machine-wide paths that did not exist before a kubestrap's k3s ran.
    #[serde(default)]
    created: BTreeSet<PathBuf>,
    /// The kernel settings of [`SYSCTLS`] before a kubestrap's k3s ran.
    #[serde(default)]
    sysctls: std::collections::BTreeMap<String, String>,
}

fn record_path() -> PathBuf {
    Path::new(STATE_DIR).join("native-k3s.toml")
}

/// Runs `f` on the record under its lock, and saves what it leaves.
fn with_record<T>(f: impl FnOnce(&mut Record) -> T) -> Result<T> {
    fskit::create_dir_mode(Path::new(STATE_DIR), 0o755)?;
    let _lock = fskit::lock(&Path::new(STATE_DIR).join("native-k3s.lock"), fskit::Mode::Exclusive, true, || {})?;
    let path = record_path();
    let mut record = match read_state::<Record>(&path) {
        Ok(r) => r.unwrap_or_default(),
        Err(why) => {
            tracing::debug!("{} is damaged ({why}); starting a new record", path.display());
            Record::default()
        }
    };
    // A profile whose directory is gone (removed by hand, or its home) uses nothing.
    record.users.retain(|d| d.is_dir());
    let out = f(&mut record);
    write_state(&path, &record)?;
    Ok(out)
}

/// Who else holds the machine, if anyone does (read without the lock: a
/// check before anything is fetched; [`claim`] decides under the lock).
pub fn other_holder(p: &Profile) -> Option<Claim> {
    let record = read_state::<Record>(&record_path()).ok().flatten()?;
    record.claim.filter(|c| c.dir != p.dir && c.live())
}

/// The blocking check a start of `p` makes before it fetches anything.
pub fn check(p: &Profile, program: &str) -> Check {
    match other_holder(p) {
        None => Check::new(
            "machine-wide k3s",
            true,
            &format!("no other native {program} runs on this machine"),
            "",
            Gate::Blocking,
        ),
        Some(c) => Check::new(
            "machine-wide k3s",
            false,
            &format!(
                "{} already runs a native {program} here; two cannot share /run/k3s, /var/lib/kubelet, cni0 and the \
                 kubelet's ports",
                c.describe()
            ),
            &format!(
                "stop it first (`kubestrap stop -p {}`), or run this cluster in a container or a VM (`--driver \
                 docker` or `--driver qemu`)",
                c.profile
            ),
            Gate::Blocking,
        ),
    }
}

/// Takes the machine for `p` at launch: refused while another profile's
/// localkube holds it. Records which machine-wide paths are new.
pub fn claim(p: &Profile, program: &str) -> Result<()> {
    let mine = Claim::of(p);
    with_record(|r| {
        if let Some(c) = r.claim.as_ref().filter(|c| c.dir != p.dir && c.live()) {
            return Err(DriverError::Unfit {
                driver: kubestrap_manifest::Driver::Native,
                failures: check(p, program).detail + &format!(" ({})", c.describe()),
            });
        }
        for path in PERSISTENT {
            let path = PathBuf::from(path);
            if !path.exists() && (r.users.is_empty() || r.created.contains(&path)) {
                r.created.insert(path);
            }
        }
        if r.users.is_empty() && r.sysctls.is_empty() {
            r.sysctls = SYSCTLS.iter().filter_map(|n| Some((n.to_string(), read_sysctl(n)?))).collect();
        }
        r.users.insert(p.dir.clone());
        r.claim = Some(mine);
        Ok(())
    })?
}

/// What a stop or delete removed from the machine, and what it could not.
#[derive(Clone, Debug, Default)]
pub struct Cleanup {
    pub removed: Vec<String>,
    pub left: Vec<String>,
}

impl Cleanup {
    fn note(&mut self, what: String, r: std::result::Result<(), String>) {
        match r {
            Ok(()) => self.removed.push(what),
            Err(e) => self.left.push(format!("{what}: {e}")),
        }
    }
}

/// After `p`'s processes are stopped: cleans up after its localkube if it
/// holds the machine (or held it last and nothing else took it), and
/// always removes its node link and guard. `delete`: `p` is going away;
/// the last one removes the machine-wide paths kubestraps created.
pub fn clean(p: &Profile, delete: bool, tools: Tools) -> Result<Cleanup> {
    let mut out = Cleanup::default();
    let node = NodeNet::of(p);
    let (ours, gone) = with_record(|r| {
        let ours = match &r.claim {
            Some(c) if c.dir == p.dir => true,
            Some(c) => !c.live() && r.users.contains(&p.dir),
            None => r.users.contains(&p.dir),
        };
        if ours {
            r.claim = None;
        }
        let mut gone = Vec::new();
        let mut sysctls = std::collections::BTreeMap::new();
        if delete {
            r.users.remove(&p.dir);
            if r.users.is_empty() && r.claim.is_none() {
                gone = std::mem::take(&mut r.created).into_iter().collect();
                // Kept in the record until they are back (a kill before that
                // puts them back at the next delete).
                sysctls = r.sysctls.clone();
            }
        }
        (ours, (gone, sysctls))
    })?;
    let (gone, sysctls) = gone;
    if ours {
        unmount(&[&p.data()], &mut out);
        links(tools, &mut out);
        for dir in RUNTIME_DIRS {
            if Path::new(dir).exists() {
                out.note(dir.to_string(), fskit::remove_tree(Path::new(dir)).map_err(|e| e.to_string()));
            }
        }
        chains(tools, &|c| is_k3s_chain(c) || c == node.chain, &mut out);
        cgroups(&mut out);
    } else {
        chains(tools, &|c| c == node.chain, &mut out);
    }
    if tools.run(&["ip", "link", "show", "dev", &node.link]).is_ok() {
        out.note(
            format!("link {}", node.link),
            tools.run(&["ip", "link", "delete", &node.link]).map(drop).map_err(|e| e.to_string()),
        );
    }
    for (name, was) in &sysctls {
        if read_sysctl(name).is_some_and(|now| now != *was) {
            let r = std::fs::write(sysctl_path(name), format!("{was}\n")).map_err(|e| e.to_string());
            out.note(format!("sysctl {} = {was} (as before k3s)", name.replace('/', ".")), r);
        }
    }
    if !sysctls.is_empty() {
        with_record(|r| {
            if r.users.is_empty() && r.claim.is_none() {
                r.sysctls.clear();
            }
        })?;
    }
    // Deepest first: /etc/rancher/node before /etc/rancher.
    for path in gone.iter().rev() {
        if path.exists() {
            out.note(path.display().to_string(), fskit::remove_tree(path).map_err(|e| e.to_string()));
        }
    }
    if delete {
        remove_record_if_unused()?;
    }
    Ok(out)
}

fn remove_record_if_unused() -> Result<()> {
    let unused = read_state::<Record>(&record_path())
        .ok()
        .flatten()
        .is_some_and(|r| r.claim.is_none() && r.users.is_empty() && r.created.is_empty() && r.sysctls.is_empty());
    if unused {
        fskit::remove_any(&record_path())?;
    }
    Ok(())
}

/// The chains k3s-killall.sh removes: kube-proxy's, the CNI plugins' and flannel's.
fn is_k3s_chain(name: &str) -> bool {
    name.starts_with("KUBE-") || name.starts_with("CNI-") || name.to_ascii_lowercase().contains("flannel")
}

/// Mount points (octal escapes undone) from /proc/self/mountinfo.
fn mount_points() -> Vec<PathBuf> {
    let info = fskit::read_capped_text(Path::new("/proc/self/mountinfo"), 16 << 20).unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let mut out = Vec::new();
            let b = m.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
                    out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("0"), 8).unwrap_or(0));
                    i += 4;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
        })
        .collect()
}

fn unmount(extra: &[&Path], out: &mut Cleanup) {
    let under = |m: &Path| {
        let s = m.to_string_lossy();
        MOUNTS.iter().any(|pre| s.starts_with(pre)) || extra.iter().any(|d| m.starts_with(d))
    };
    let mut found: Vec<PathBuf> = mount_points().into_iter().filter(|m| under(m)).collect();
    // Deepest first; a path mounted twice is unmounted twice.
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in found {
        let r = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).map_err(|e| e.desc().to_string());
        if r.is_ok() && m.to_string_lossy().starts_with("/run/netns/cni-") {
            let _ = std::fs::remove_file(&m);
        }
        out.note(format!("mount {}", m.display()), r);
    }
}

/// The pods' veths (attached to cni0), then the CNI, flannel and IPVS links.
fn links(tools: Tools, out: &mut Cleanup) {
    let Ok(json) = tools.run(&["ip", "-j", "link", "show"]) else { return };
    let all: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
    let name = |l: &serde_json::Value| l["ifname"].as_str().unwrap_or_default().to_string();
    let mut doomed: Vec<String> = all.iter().filter(|l| l["master"].as_str() == Some(CNI_BRIDGE)).map(name).collect();
    doomed.extend(all.iter().map(name).filter(|n| LINKS.contains(&n.as_str())));
    for l in doomed {
        // A pod's veth goes by itself once its namespace is gone (the
        // kernel tears it down in the background): gone is as good as deleted.
        let r = tools.run(&["ip", "link", "delete", &l]).map(drop).or_else(|e| {
            if tools.run(&["ip", "link", "show", "dev", &l]).is_err() { Ok(()) } else { Err(e.to_string()) }
        });
        out.note(format!("link {l}"), r);
    }
}

/// The chains `doomed` picks, and the rules elsewhere that jump to them or
/// name them, in every iptables the machine has (nft and legacy, IPv4 and
/// IPv6): one `restore --noflush` per table set, nothing else touched.
fn chains(tools: Tools, doomed: &dyn Fn(&str) -> bool, out: &mut Cleanup) {
    let mut variants = Vec::new();
    for family in ["iptables", "ip6tables"] {
        let of_family: Vec<String> = ["nft", "legacy"]
            .iter()
            .map(|v| format!("{family}-{v}"))
            .filter(|v| tools.find(&format!("{v}-save")).is_some())
            .collect();
        if of_family.is_empty() && tools.find(&format!("{family}-save")).is_some() {
            variants.push(family.to_string());
        }
        variants.extend(of_family);
    }
    // Every table read at once (each save is a process of its own, most of
    // a stop's time when run one after another).
    let saved: Vec<Option<String>> = std::thread::scope(|s| {
        let hs: Vec<_> = variants.iter().map(|v| s.spawn(move || tools.run(&[&format!("{v}-save")]).ok())).collect();
        hs.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    for (v, saved) in variants.iter().zip(saved) {
        let Some(saved) = saved else { continue };
        let (script, names) = removal_script(&saved, doomed);
        if names.is_empty() {
            continue;
        }
        let r = tools.run_with_input(&[&format!("{v}-restore"), "-w", "--noflush"], Some(script));
        for n in names {
            out.note(format!("{v} chain {n}"), r.as_ref().map(drop).map_err(|e| e.to_string()));
        }
    }
}

/// An `iptables-restore --noflush` script that deletes, per table, the
/// rules outside the doomed chains that name one, then flushes and removes
/// the doomed chains. Returns it and the chains (`table/chain`).
fn removal_script(saved: &str, doomed: &dyn Fn(&str) -> bool) -> (String, Vec<String>) {
    let mut script = String::new();
    let mut names = Vec::new();
    let mut table = String::new();
    let (mut deletes, mut chains) = (Vec::new(), Vec::new());
    // k3s-killall.sh drops every rule that names one at all (a "flanneld
    // masq" comment on a POSTROUTING rule, say): so does this.
    let mentions = |rule: &str| rule.split([' ', '"']).any(|w| !w.is_empty() && doomed(w));
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split(' ').next().unwrap_or_default();
            if doomed(chain) {
                chains.push(chain.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split(' ').next().unwrap_or_default();
            if !doomed(chain) && mentions(rule) {
                deletes.push(format!("-D {rule}"));
            }
        } else if line == "COMMIT" && (!deletes.is_empty() || !chains.is_empty()) {
            script.push_str(&format!("*{table}\n"));
            for d in deletes.drain(..) {
                script.push_str(&format!("{d}\n"));
            }
            for c in &chains {
                script.push_str(&format!("-F {c}\n"));
            }
            for c in chains.drain(..) {
                script.push_str(&format!("-X {c}\n"));
                names.push(format!("{table}/{c}"));
            }
            script.push_str("COMMIT\n");
        }
    }
    (script, names)
}

/// Empty `kubepods` cgroups the kubelet made, and the `k3s` cgroup k3s
/// makes for its kubelet and containerd when it finds itself in the root
/// cgroup (k3s pkg/cgroups): in the v2 root, or each v1 hierarchy.
fn cgroups(out: &mut Cleanup) {
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        bases.extend(rd.flatten().map(|e| e.path()));
    }
    let tops: Vec<PathBuf> = bases.iter().flat_map(|b| [b.join("kubepods"), b.join("k3s")]).collect();
    for top in tops.into_iter().filter(|t| t.is_dir()) {
        let mut dirs = vec![top.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                dirs.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
            i += 1;
        }
        let mut ok = true;
        for d in dirs.iter().rev() {
            ok &= std::fs::remove_dir(d).is_ok();
        }
        out.note(format!("cgroup {}", top.display()), if ok { Ok(()) } else { Err("not empty".into()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_touches_only_the_doomed_chains_and_rules_naming_them() {
        let saved = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n\
                     :FLANNEL-FWD - [0:0]\n:KUBE-FIREWALL - [0:0]\n:KUBESTRAP-ABCDE - [0:0]\n\
                     -A INPUT -d 198.18.1.2/32 -j KUBESTRAP-ABCDE\n-A INPUT -j KUBE-FIREWALL\n\
                     -A FORWARD -j DOCKER-USER\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
                     -A FLANNEL-FWD -s 10.42.0.0/16 -j ACCEPT\n-A KUBESTRAP-ABCDE -i lo -j RETURN\nCOMMIT\n\
                     *nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE\nCOMMIT\n";
        let (script, names) = removal_script(saved, &|c| is_k3s_chain(c) || c == "KUBESTRAP-ABCDE");
        assert_eq!(names, ["filter/FLANNEL-FWD", "filter/KUBE-FIREWALL", "filter/KUBESTRAP-ABCDE"]);
        assert_eq!(
            script,
            "*filter\n-D INPUT -d 198.18.1.2/32 -j KUBESTRAP-ABCDE\n-D INPUT -j KUBE-FIREWALL\n\
             -D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-F FLANNEL-FWD\n-F KUBE-FIREWALL\n\
             -F KUBESTRAP-ABCDE\n-X FLANNEL-FWD\n-X KUBE-FIREWALL\n-X KUBESTRAP-ABCDE\nCOMMIT\n"
        );
        // Only the node's own chain: nothing of k3s's is touched.
        let (script, names) = removal_script(saved, &|c| c == "KUBESTRAP-ABCDE");
        assert_eq!(names, ["filter/KUBESTRAP-ABCDE"]);
        assert!(!script.contains("KUBE-FIREWALL") && !script.contains("FLANNEL"), "{script}");
    }
}
