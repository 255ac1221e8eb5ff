//! The pod network, as flannel's CNI config makes it (the `bridge` plugin
//! with bridge `cni0` and host-local addresses from the cluster CIDR): a
//! veth pair from the bridge into the pod's network namespace, which the
//! plugin bind-mounts at /run/netns/cni-<id>. Then the one thing every pod
//! does first: reach the API at the `kubernetes` Service's endpoint, the
//! advertised address and the https port (k3s
//! pkg/daemons/control/server.go) — kube-proxy's DNAT sends the Service's
//! traffic there. Netlink from here, as the CNI plugins use it (the guests
//! have no iproute2).

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use super::config::Effective;
use super::{Check, Status};

pub const BRIDGE: &str = "cni0";
const NETWORKS: &str = "/var/lib/cni/networks/cbr0";

/// The address of the interface the default route leaves by (what k3s and
/// kube-apiserver fall back to): the route lookup of a UDP socket's
/// connect, which sends nothing.
pub fn default_route_address() -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    match s.local_addr().ok()? {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
        _ => None,
    }
}

/// Runs `f` with a netlink handle on a runtime of this thread.
fn netlink<T>(f: impl AsyncFnOnce(Handle) -> Result<T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        f(handle).await
    })
}

async fn link_index(h: &Handle, name: &str) -> Option<u32> {
    h.link().get().match_name(name.to_string()).execute().try_next().await.ok().flatten().map(|m| m.header.index)
}

/// The first /24 of the cluster CIDR: (gateway, prefix).
fn pod_subnet(cidr: &str) -> Result<Ipv4Addr> {
    let (net, _) = cidr.split_once('/').ok_or_else(|| anyhow!("cluster CIDR {cidr:?} has no prefix"))?;
    let net: Ipv4Addr = net.parse().with_context(|| format!("cluster CIDR {cidr:?}"))?;
    let [a, b, c, _] = net.octets();
    Ok(Ipv4Addr::new(a, b, c, 1))
}

/// host-local IPAM: the first free address after the gateway, recorded.
fn reserve(gateway: Ipv4Addr, owner: &str) -> Result<Ipv4Addr> {
    std::fs::create_dir_all(NETWORKS)?;
    let [a, b, c, _] = gateway.octets();
    for last in 2..=254u8 {
        let ip = Ipv4Addr::new(a, b, c, last);
        let path = Path::new(NETWORKS).join(ip.to_string());
        if std::fs::OpenOptions::new().write(true).create_new(true).open(&path).is_ok() {
            std::fs::write(&path, format!("{owner}\neth0"))?;
            std::fs::write(Path::new(NETWORKS).join("last_reserved_ip.0"), ip.to_string())?;
            return Ok(ip);
        }
    }
    Err(anyhow!("no free address left in {gateway}/24"))
}

/// `listen`: where the API listens (bind address, port), for the report.
pub fn wire_and_connect(pid: i32, cfg: &Effective, advertised: Option<Ipv4Addr>, listen: (&str, u16)) -> Check {
    match wire(pid, cfg, advertised, listen) {
        Ok(detail) => Check::ok("pod network", detail),
        Err(e) => Check::failed("pod network", format!("{e:#}")),
    }
}

fn wire(pid: i32, cfg: &Effective, advertised: Option<Ipv4Addr>, (bind, port): (&str, u16)) -> Result<String> {
    let gateway = pod_subnet(&cfg.cluster_cidr)?;
    let id = format!("{:08x}", crate::store::random_u64() as u32);
    let (veth, peer) = (format!("veth{id}"), format!("ks{id}"));
    let pod_ip = reserve(gateway, &format!("{pid}"))?;
    netlink(async |h: Handle| {
        let bridge = match link_index(&h, BRIDGE).await {
            Some(i) => i,
            None => {
                h.link().add(LinkBridge::new(BRIDGE).up().build()).execute().await.context("creating cni0")?;
                let i = link_index(&h, BRIDGE).await.ok_or_else(|| anyhow!("cni0 vanished"))?;
                h.address().add(i, gateway.into(), 24).execute().await.context("addressing cni0")?;
                i
            }
        };
        h.link().add(LinkVeth::new(&veth, &peer).build()).execute().await.context("creating the veth pair")?;
        h.link()
            .set(LinkUnspec::new_with_name(&peer).setns_by_pid(pid as u32).build())
            .execute()
            .await
            .context("moving the veth into the pod's namespace")?;
        h.link()
            .set(LinkUnspec::new_with_name(&veth).controller(bridge).up().build())
            .execute()
            .await
            .context("attaching the veth to cni0")?;
        Ok(())
    })?;
    // The pod's namespace, as the CNI plugin keeps it: /run/netns made a
    // shared mount point of its own first (containernetworking/plugins
    // pkg/ns, as `ip netns add` does), so the namespace's bind mount
    // propagates and is never hidden under a later one.
    let ns = Path::new("/run/netns").join(format!("cni-{id}"));
    shared_mount_point(Path::new("/run/netns"))?;
    std::fs::write(&ns, b"")?;
    nix::mount::mount(
        Some(Path::new(&format!("/proc/{pid}/ns/net"))),
        &ns,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting the pod's netns at {}", ns.display()))?;
    let target = advertised
        .ok_or_else(|| anyhow!("no advertised address: no --advertise-address, --node-ip or default route"))?;
    // In the pod's namespace, on a thread of its own (setns moves one thread).
    let nsfile = std::fs::File::open(&ns)?;
    let peer2 = peer.clone();
    let bind = bind.to_string();
    let reached = std::thread::spawn(move || -> Result<String> {
        nix::sched::setns(nsfile.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("entering the pod's netns")?;
        netlink(async |h: Handle| {
            let lo = link_index(&h, "lo").await.ok_or_else(|| anyhow!("the pod has no lo"))?;
            h.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await?;
            let eth = link_index(&h, &peer2).await.ok_or_else(|| anyhow!("the veth did not arrive in the pod"))?;
            h.link().set(LinkUnspec::new_with_index(eth).name("eth0").up().build()).execute().await?;
            h.address().add(eth, pod_ip.into(), 24).execute().await.context("addressing the pod")?;
            h.route()
                .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build())
                .execute()
                .await
                .context("the pod's default route")?;
            Ok(())
        })?;
        let to = SocketAddr::from((target, port));
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map(|_| format!("pod {pod_ip} ({}, {veth} on {BRIDGE}) reached the API at {to}", ns.display()))
            .map_err(|e| {
                anyhow!(
                    "pod {pod_ip} could not reach the API at {to}, the kubernetes Service's endpoint: {e} \
                     (the API listens on {bind}:{port})"
                )
            })
    })
    .join()
    .map_err(|_| anyhow!("the pod network thread panicked"))??;
    Ok(reached)
}

/// Makes `dir` a mount point (a bind mount onto itself) and shared.
fn shared_mount_point(dir: &Path) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(dir)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = info.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == dir));
    if !mounted {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .with_context(|| format!("bind-mounting {} onto itself", dir.display()))?;
    }
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("making {} shared", dir.display()))?;
    Ok(())
}

/// The interface of the default route, from /proc/net/route.
fn default_route_iface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// The first IPv4 address of `iface`.
fn iface_address(iface: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|i| i.interface_name == iface)
        .find_map(|i| i.address.as_ref().and_then(|a| a.as_sockaddr_in()).map(|s| s.ip()))
}

/// The interface flannel's VXLAN uses and its address, chosen as k3s
/// chooses: `--flannel-iface`, else the default route's interface, never
/// `--node-ip`'s (pkg/agent/flannel/flannel.go `LookupExtInterface`). No
/// default route and no `--flannel-iface` is fatal (pkg/agent/flannel/setup.go).
pub fn flannel_interface(iface: Option<&str>) -> Result<(String, Ipv4Addr)> {
    let name = match iface {
        Some(n) => n.to_string(),
        None => default_route_iface().ok_or_else(|| {
            anyhow!("flannel exited: failed to get default interface: no default route (give --flannel-iface)")
        })?,
    };
    let addr = iface_address(&name)
        .ok_or_else(|| anyhow!("flannel exited: failed to find an IPv4 address for interface {name}"))?;
    Ok((name, addr))
}

/// flannel's VXLAN device (flannel.1, VNI 1, UDP 8472) on the interface
/// k3s chooses; `Err` is fatal, as it is for k3s. Failed where that
/// interface's address is not the node's: other nodes would send this
/// node's pod traffic where it never arrives.
pub fn flannel_vxlan(iface: Option<&str>, node_ip: Option<Ipv4Addr>) -> Result<Check> {
    let (dev_name, local) = flannel_interface(iface)?;
    if let Some(ip) = node_ip
        && ip != local
    {
        return Ok(Check::failed(
            "flannel",
            format!(
                "flannel uses {dev_name} ({local}), not the node address {ip}: other nodes send this node's pod \
                 traffic to {local} (k3s --flannel-iface names the node's interface)"
            ),
        ));
    }
    let made = netlink(async |h: Handle| {
        if link_index(&h, "flannel.1").await.is_some() {
            return Ok(format!("flannel.1 exists (on {dev_name}, {local})"));
        }
        let dev = link_index(&h, &dev_name).await.ok_or_else(|| anyhow!("no interface {dev_name}"))?;
        h.link()
            .add(LinkVxlan::new("flannel.1", 1).dev(dev).local(local).port(8472).up().build())
            .execute()
            .await
            .context("creating flannel.1")?;
        Ok(format!("flannel.1 (VXLAN 1, on {dev_name}, local {local})"))
    });
    Ok(match made {
        Ok(d) => Check::ok("flannel", d),
        Err(e) => Check::new("flannel", Status::Warn, format!("{e:#}")),
    })
}
