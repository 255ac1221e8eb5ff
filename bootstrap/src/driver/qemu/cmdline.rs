//! The qemu command line, as plain functions of plain data: which
//! accelerator a machine has (KVM on Linux, HVF on macOS, WHPX on Windows,
//! TCG everywhere) and the arguments for it. Other platforms need packaging
//! (a hypervisor artifact built for them), not new logic: their command
//! lines are rendered and tested here.

use std::path::PathBuf;

pub use crate::profile::Accel;

/// What the host offers, as probed (or as a test says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCaps {
    /// `linux`, `darwin`, `windows`.
    pub os: String,
    /// KVM runs guests here (see `kvm::usable`), and what was found.
    pub kvm: bool,
    pub kvm_why: String,
    /// `kern.hv_support` is 1 (macOS).
    pub hvf: bool,
    /// The Windows Hypervisor Platform is enabled.
    pub whpx: bool,
}

/// The accelerator to use, and why: the one asked for if the host has it
/// (TCG always), else the host's own, else TCG.
pub fn select_accel(host: &HostCaps, asked: Option<Accel>) -> Result<(Accel, String), String> {
    let has = |a: Accel| match a {
        Accel::Kvm => host.os == "linux" && host.kvm,
        Accel::Hvf => host.os == "darwin" && host.hvf,
        Accel::Whpx => host.os == "windows" && host.whpx,
        Accel::Tcg => true,
    };
    if let Some(a) = asked {
        return if has(a) {
            Ok((a, format!("{a} (asked for with --accel)")))
        } else {
            Err(format!("--accel {a}: not on this {} machine ({})", host.os, lacks(host, a)))
        };
    }
    let native = match host.os.as_str() {
        "linux" => Accel::Kvm,
        "darwin" => Accel::Hvf,
        "windows" => Accel::Whpx,
        _ => Accel::Tcg,
    };
    if has(native) {
        return Ok((native, format!("{native} (hardware virtualization)")));
    }
    Ok((Accel::Tcg, format!("tcg (software emulation: {}; expect slow starts)", lacks(host, native))))
}

/// Why accelerator `a` cannot be had here.
fn lacks(host: &HostCaps, a: Accel) -> &str {
    match a {
        Accel::Kvm if host.os == "linux" && !host.kvm_why.is_empty() => host.kvm_why.as_str(),
        Accel::Kvm if host.os == "linux" => "no usable /dev/kvm",
        Accel::Hvf if host.os == "darwin" => "Hypervisor.framework is not available",
        Accel::Whpx if host.os == "windows" => "the Windows Hypervisor Platform is not enabled",
        Accel::Kvm => "KVM is Linux's",
        Accel::Hvf => "Hypervisor.framework is macOS's",
        Accel::Whpx => "the Windows Hypervisor Platform is Windows'",
        Accel::Tcg => "no hardware virtualization",
    }
}

/// Everything one VM's command line depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub accel: Accel,
    pub cpus: u16,
    pub memory_mib: u32,
    /// The hypervisor tree's firmware directory (`-L`).
    pub firmware: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub data_disk: PathBuf,
    pub config_disk: PathBuf,
    /// 127.0.0.1:<host_port> on the host → <guest_port> in the guest.
    pub host_port: u16,
    pub guest_port: u16,
    /// `--listen`: the same port forwarded from this address too.
    pub listen: Option<std::net::Ipv4Addr>,
    /// `--publish`: (host port, guest port), forwarded as the API's is.
    pub publish: Vec<(u16, u16)>,
    /// Whether the apiserver's port is forwarded at all (an agent node's VM
    /// serves nothing to this machine).
    pub forward: bool,
    /// The cluster's private L2 segment, shared by its nodes' VMs.
    pub l2: Option<L2>,
    pub qmp_socket: PathBuf,
    /// Resume from this internal snapshot of the data disk.
    pub loadvm: Option<String>,
}

/// A VM's NIC on its cluster's private L2 segment: a multicast socket
/// netdev on 127.0.0.1 (every VM of the cluster on the same group; no host
/// bridge, no root), with a MAC of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L2 {
    /// `group:port`.
    pub mcast: String,
    pub mac: String,
}

/// The guest's address on qemu's user-mode network.
pub const GUEST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 15);

/// qemu's arguments (after the program) for a spec.
pub fn args(vm: &VmSpec) -> Vec<String> {
    let p = |p: &PathBuf| p.display().to_string();
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &vm.name, "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none"]);
    // q35 everywhere x86_64; the accelerator decides the CPU model.
    let (accel, cpu) = match vm.accel {
        // A 256 MiB translation cache instead of qemu's 1 GiB default:
        // qemu's resident memory is most of it.
        Accel::Tcg => ("tcg,thread=multi,tb-size=256", "max"),
        Accel::Kvm => ("kvm", "host"),
        Accel::Hvf => ("hvf", "host"),
        Accel::Whpx => ("whpx,kernel-irqchip=off", "max"),
    };
    push(&["-machine", "q35", "-accel", accel, "-cpu", cpu]);
    push(&["-smp", &vm.cpus.to_string(), "-m", &format!("{}M", vm.memory_mib)]);
    push(&["-L", &p(&vm.firmware), "-kernel", &p(&vm.kernel), "-initrd", &p(&vm.initrd)]);
    push(&["-append", "console=ttyS0 quiet panic=-1"]);
    push(&["-rtc", "base=utc,clock=host"]);
    push(&[
        "-drive",
        // Zeroes the guest writes (mke2fs's inode tables) stay unallocated.
        &format!(
            "if=none,id=data,file={},format=qcow2,cache=writeback,discard=unmap,detect-zeroes=unmap",
            drive_path(&vm.data_disk)
        ),
        "-device",
        "virtio-blk-pci,drive=data",
        "-drive",
        &format!("if=none,id=config,file={},format=raw,readonly=on", drive_path(&vm.config_disk)),
        "-device",
        "virtio-blk-pci,drive=config",
    ]);
    let mut user = "user,id=net0".to_string();
    if vm.forward {
        for (host, guest) in [(vm.host_port, vm.guest_port)].into_iter().chain(vm.publish.iter().copied()) {
            user.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-{GUEST_IP}:{guest}"));
            if let Some(a) = vm.listen {
                user.push_str(&format!(",hostfwd=tcp:{a}:{host}-{GUEST_IP}:{guest}"));
            }
        }
    }
    push(&[
        "-netdev",
        &user,
        // No option ROM: a direct kernel boot does not network-boot.
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
    ]);
    if let Some(l2) = &vm.l2 {
        push(&[
            "-netdev",
            &format!("socket,id=net1,mcast={},localaddr=127.0.0.1", l2.mcast),
            "-device",
            &format!("virtio-net-pci,netdev=net1,mac={},romfile=", l2.mac),
        ]);
    }
    push(&["-device", "virtio-rng-pci"]);
    // Free page reporting: memory the guest frees goes back to the host.
    push(&["-device", "virtio-balloon-pci,free-page-reporting=on"]);
    // The console on qemu's stdout: the monitor writes it to the profile's
    // log with the log's size cap (a busy localkube logs a lot).
    push(&["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", drive_path(&vm.qmp_socket))]);
    if let Some(tag) = &vm.loadvm {
        push(&["-loadvm", tag]);
    }
    a
}

/// A path inside a `-drive`/`-chardev` option: commas doubled, as qemu's
/// option syntax escapes them.
fn drive_path(p: &std::path::Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(os: &str, kvm: bool, hvf: bool, whpx: bool) -> HostCaps {
        HostCaps { os: os.into(), kvm, kvm_why: String::new(), hvf, whpx }
    }

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            name: "kubestrap-dev".into(),
            accel,
            cpus: 2,
            memory_mib: 2048,
            firmware: "/h/share/qemu".into(),
            kernel: "/b/vmlinuz".into(),
            initrd: "/b/initrd.img".into(),
            data_disk: "/p/vm/data.qcow2".into(),
            config_disk: "/p/vm/config,1.tar".into(),
            host_port: 8443,
            guest_port: 6443,
            listen: None,
            publish: Vec::new(),
            forward: true,
            l2: None,
            qmp_socket: "/p/vm/qmp.sock".into(),
            loadvm: None,
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> &'a str {
        let i = a.iter().position(|x| x == flag).unwrap_or_else(|| panic!("{flag} missing from {a:?}"));
        &a[i + 1]
    }

    #[test]
    fn each_platform_gets_its_own_accelerator_and_tcg_otherwise() {
        assert_eq!(select_accel(&host("linux", true, false, false), None).unwrap().0, Accel::Kvm);
        let (a, why) = select_accel(&host("linux", false, false, false), None).unwrap();
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("no usable /dev/kvm"), "{why}");
        assert_eq!(select_accel(&host("darwin", false, true, false), None).unwrap().0, Accel::Hvf);
        assert_eq!(select_accel(&host("darwin", false, false, false), None).unwrap().0, Accel::Tcg);
        assert_eq!(select_accel(&host("windows", false, false, true), None).unwrap().0, Accel::Whpx);
        assert_eq!(select_accel(&host("linux", true, false, false), Some(Accel::Tcg)).unwrap().0, Accel::Tcg);
        let err = select_accel(&host("linux", false, false, false), Some(Accel::Kvm)).unwrap_err();
        assert_eq!(err, "--accel kvm: not on this linux machine (no usable /dev/kvm)");
        assert!(select_accel(&host("linux", true, false, false), Some(Accel::Hvf)).is_err());
        assert_eq!("whpx".parse::<Accel>().unwrap(), Accel::Whpx);
        assert!("xen".parse::<Accel>().is_err());
    }

    #[test]
    fn command_lines_per_accelerator() {
        let tcg = args(&spec(Accel::Tcg));
        assert_eq!((after(&tcg, "-accel"), after(&tcg, "-cpu")), ("tcg,thread=multi,tb-size=256", "max"));
        let kvm = args(&spec(Accel::Kvm));
        assert_eq!((after(&kvm, "-accel"), after(&kvm, "-cpu")), ("kvm", "host"));
        let hvf = args(&spec(Accel::Hvf));
        assert_eq!((after(&hvf, "-accel"), after(&hvf, "-cpu")), ("hvf", "host"));
        let whpx = args(&spec(Accel::Whpx));
        assert_eq!((after(&whpx, "-accel"), after(&whpx, "-cpu")), ("whpx,kernel-irqchip=off", "max"));
        assert_eq!(after(&tcg, "-m"), "2048M");
        assert_eq!(after(&tcg, "-smp"), "2");
        assert_eq!(after(&tcg, "-netdev"), "user,id=net0,hostfwd=tcp:127.0.0.1:8443-10.0.2.15:6443");
        assert!(tcg.iter().any(|x| x == "if=none,id=config,file=/p/vm/config,,1.tar,format=raw,readonly=on"));
        assert_eq!(after(&tcg, "-qmp"), "unix:/p/vm/qmp.sock,server=on,wait=off");
        assert!(!tcg.contains(&"-loadvm".to_string()));
        let mut resume = spec(Accel::Tcg);
        resume.loadvm = Some("kubestrap-suspend".into());
        assert_eq!(after(&args(&resume), "-loadvm"), "kubestrap-suspend");
        // Nothing in the command line depends on anything but the spec.
        assert_eq!(args(&spec(Accel::Tcg)), tcg);
    }
}
