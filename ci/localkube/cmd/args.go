package main

import (
	"fmt"
	"io/ioutil"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Each component's command line: the wiring localkube owns (certificates,
// kubeconfigs, sockets, addresses), then the run section's extra flags.
// Every listener is on loopback or the node address, never on all
// addresses: on the native driver the node is the user's machine.

func (n *node) etcdArgs() []string {
	d := filepath.Join(n.o.dataDir, "etcd")
	peer := "https://127.0.0.1:2380"
	return n.with("etcd", []string{
		"--name=" + n.o.nodeName,
		"--data-dir=" + d,
		"--listen-client-urls=https://127.0.0.1:2379",
		"--advertise-client-urls=https://127.0.0.1:2379",
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=" + n.o.nodeName + "=" + peer,
		"--listen-metrics-urls=http://127.0.0.1:2381",
		// Clients and peers prove themselves with certificates from the
		// etcd CA: no other local user reads the cluster's secrets.
		"--client-cert-auth", "--trusted-ca-file=" + n.o.etcdCACert,
		"--cert-file=" + n.file("etcd-server.crt"), "--key-file=" + n.file("etcd-server.key"),
		"--peer-client-cert-auth", "--peer-trusted-ca-file=" + n.o.etcdCACert,
		"--peer-cert-file=" + n.file("etcd-server.crt"), "--peer-key-file=" + n.file("etcd-server.key"),
		"--snapshot-count=10000",
		"--logger=zap", "--log-outputs=stderr",
	})
}

func (n *node) apiserverArgs() []string {
	o := n.o
	return n.with("kube-apiserver", []string{
		"--advertise-address=" + o.nodeIP,
		"--bind-address=" + o.bindAddress,
		fmt.Sprintf("--secure-port=%d", o.port),
		"--insecure-port=0",
		"--etcd-servers=https://127.0.0.1:2379",
		"--etcd-cafile=" + o.etcdCACert,
		"--etcd-certfile=" + n.file("etcd-client.crt"),
		"--etcd-keyfile=" + n.file("etcd-client.key"),
		"--client-ca-file=" + o.caCert,
		"--tls-cert-file=" + n.file("apiserver.crt"),
		"--tls-private-key-file=" + n.file("apiserver.key"),
		"--kubelet-client-certificate=" + n.file("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + n.file("apiserver-kubelet-client.key"),
		// Node names do not resolve on these machines: reach kubelets by address.
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-account-key-file=" + o.saPub,
		"--service-account-signing-key-file=" + o.saKey,
		"--service-account-issuer=https://kubernetes.default.svc." + o.clusterDomain,
		"--service-cluster-ip-range=" + o.serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--enable-bootstrap-token-auth=true",
		"--allow-privileged=true",
		"--profiling=false",
		"--token-auth-file=" + o.tokenFile,
	})
}

func (n *node) controllerManagerArgs() []string {
	o := n.o
	kc := filepath.Join(n.conf, "controller-manager.kubeconfig")
	return n.with("kube-controller-manager", []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=10257",
		"--port=0",
		// CSRs are signed with the cluster CA (kubelet TLS bootstrapping).
		"--cluster-signing-cert-file=" + o.caCert,
		"--cluster-signing-key-file=" + o.caKey,
		"--root-ca-file=" + o.caCert,
		"--service-account-private-key-file=" + o.saKey,
		"--use-service-account-credentials=true",
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + o.clusterCIDR,
		"--service-cluster-ip-range=" + o.serviceCIDR,
		"--node-cidr-mask-size=24",
		"--controllers=*,bootstrapsigner,tokencleaner",
		"--configure-cloud-routes=false",
		"--leader-elect=false",
		"--profiling=false",
	})
}

func (n *node) schedulerArgs() []string {
	kc := filepath.Join(n.conf, "scheduler.kubeconfig")
	return n.with("kube-scheduler", []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=10259",
		"--port=0",
		"--leader-elect=false",
		"--profiling=false",
	})
}

func (n *node) kubeletArgs() []string {
	o := n.o
	return n.with("kubelet", []string{
		"--config=" + filepath.Join(n.conf, "kubelet.yaml"),
		"--kubeconfig=" + filepath.Join(n.conf, "kubelet-client.kubeconfig"),
		"--container-runtime=remote",
		"--container-runtime-endpoint=unix://" + n.containerdSocket(),
		"--hostname-override=" + o.nodeName,
		"--node-ip=" + o.nodeIP,
		"--pod-infra-container-image=" + pauseImage,
		"--cert-dir=" + filepath.Join(o.dataDir, "kubelet-pki"),
	})
}

func (n *node) proxyArgs() []string {
	o := n.o
	return n.with("kube-proxy", []string{
		"--kubeconfig=" + filepath.Join(n.conf, "kube-proxy.kubeconfig"),
		"--hostname-override=" + o.nodeName,
		"--bind-address=" + o.nodeIP,
		"--cluster-cidr=" + o.clusterCIDR,
		"--proxy-mode=iptables",
		"--healthz-bind-address=127.0.0.1:10256",
		"--metrics-bind-address=127.0.0.1:10249",
		// The machine's conntrack table sizes and timeouts are left as they
		// are (a container cannot set them; a host should not be changed).
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--profiling=false",
	})
}

func (n *node) dnsArgs() []string {
	o := n.o
	return []string{
		"--kubeconfig=" + filepath.Join(n.conf, "dns.kubeconfig"),
		"--listen=" + net.JoinHostPort(o.nodeIP, fmt.Sprint(o.dnsPort)),
		"--domain=" + o.clusterDomain,
		"--resolv-conf=/etc/resolv.conf",
	}
}

// cgroupDriver matches the host's: systemd where systemd is PID 1 on the
// unified hierarchy (it owns the cgroup tree, as k3s decides), else
// cgroupfs (cgroup v1, a container's init, these build machines).
// containerd's runc is configured to match.
func cgroupDriver() string {
	comm, _ := ioutil.ReadFile("/proc/1/comm")
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil && strings.TrimSpace(string(comm)) == "systemd" {
		return "systemd"
	}
	return "cgroupfs"
}

// kubeletConfig is the KubeletConfiguration file: authentication by the
// cluster CA and webhook, the cgroup driver containerd uses, eviction
// thresholds a laptop's disk does not trip, cluster DNS.
func (n *node) kubeletConfig() string {
	o := n.o
	return strings.Join([]string{
		"apiVersion: kubelet.config.k8s.io/v1beta1",
		"kind: KubeletConfiguration",
		"address: " + o.nodeIP,
		"port: 10250",
		"readOnlyPort: 0",
		"healthzBindAddress: 127.0.0.1",
		"healthzPort: 10248",
		"tlsCertFile: " + n.file("kubelet.crt"),
		"tlsPrivateKeyFile: " + n.file("kubelet.key"),
		"authentication:",
		"  anonymous: {enabled: false}",
		"  webhook: {enabled: true}",
		"  x509: {clientCAFile: " + o.caCert + "}",
		"authorization: {mode: Webhook}",
		"cgroupDriver: " + cgroupDriver(),
		"failSwapOn: false",
		"clusterDomain: " + o.clusterDomain,
		"clusterDNS: [" + o.clusterDNS + "]",
		"resolvConf: " + filepath.Join(n.conf, "resolv.conf"),
		"serializeImagePulls: false",
		"evictionHard: {memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}",
		"evictionPressureTransitionPeriod: 10s",
		"imageGCHighThresholdPercent: 100",
		"imageGCLowThresholdPercent: 99",
		"nodeStatusReportFrequency: 10s",
		"",
	}, "\n")
}
