package main

import (
	"context"
	"fmt"
	"io/ioutil"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/component-base/version"
)

// serverOptions are `localkube server`'s flags: where the node keeps its
// state, who it is, the CA files kubestrap placed, the cluster's address
// ranges, and extra arguments for each component (k3s's `--X-arg` form).
type serverOptions struct {
	dataDir       string
	runDir        string
	nodeName      string
	nodeIP        string
	bindAddress   string
	port          int
	caCert        string
	caKey         string
	etcdCACert    string
	etcdCAKey     string
	saKey         string
	saPub         string
	tokenFile     string
	clusterCIDR   string
	serviceCIDR   string
	clusterDNS    string
	clusterDomain string
	dnsPort       int
	snapshotter   string
	imagesDir     string
	tlsSANs       []string
	extra         map[string]*[]string
}

// components in start order; stopped in the reverse order.
var componentNames = []string{"etcd", "containerd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "dns"}

func newServerCommand() *cobra.Command {
	o := &serverOptions{extra: map[string]*[]string{}}
	cmd := &cobra.Command{
		Use:          "server",
		Short:        "Run one Kubernetes node: etcd, containerd, the five upstream components and cluster DNS, supervised",
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return runServer(o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "the node's state (etcd, containerd, certificates, logs)")
	f.StringVar(&o.runDir, "run-dir", "/run/localkube", "runtime state: sockets and containerd's state (one node per machine)")
	f.StringVar(&o.nodeName, "node-name", "", "the node's name")
	f.StringVar(&o.nodeIP, "node-ip", "", "the node's address: kubelet, the advertised apiserver and cluster DNS are there")
	f.StringVar(&o.bindAddress, "bind-address", "", "where the apiserver listens (default: the node address)")
	f.IntVar(&o.port, "https-listen-port", 6443, "the apiserver's port")
	f.StringVar(&o.caCert, "ca-cert", "", "the cluster CA's certificate (kubestrap's PKI)")
	f.StringVar(&o.caKey, "ca-key", "", "the cluster CA's key: every component certificate is issued from it")
	f.StringVar(&o.etcdCACert, "etcd-ca-cert", "", "etcd's CA certificate")
	f.StringVar(&o.etcdCAKey, "etcd-ca-key", "", "etcd's CA key")
	f.StringVar(&o.saKey, "service-account-key", "", "the key service account tokens are signed with")
	f.StringVar(&o.saPub, "service-account-public-key", "", "its public key (the apiserver checks tokens with it)")
	f.StringVar(&o.tokenFile, "token-auth-file", "", "the apiserver's static token file")
	f.StringVar(&o.clusterCIDR, "cluster-cidr", "10.42.0.0/16", "pod addresses (each node gets a /24)")
	f.StringVar(&o.serviceCIDR, "service-cidr", "10.43.0.0/16", "Service ClusterIPs")
	f.StringVar(&o.clusterDNS, "cluster-dns", "10.43.0.10", "the kube-dns Service's ClusterIP")
	f.StringVar(&o.clusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	f.IntVar(&o.dnsPort, "dns-port", 10053, "the port cluster DNS serves on at the node address (the kube-dns Service's port 53 leads there)")
	f.StringVar(&o.snapshotter, "snapshotter", "auto", "containerd's snapshotter: overlayfs, native, or auto (overlayfs where the data directory can mount it)")
	f.StringVar(&o.imagesDir, "images-dir", "", "image archives imported at start and whenever one is added")
	f.StringSliceVar(&o.tlsSANs, "tls-san", nil, "extra names or addresses in the apiserver's serving certificate")
	for _, c := range componentNames {
		if c == "dns" {
			continue
		}
		v := &[]string{}
		o.extra[c] = v
		f.StringArrayVar(v, c+"-arg", nil, "an extra flag for "+c+" (name=value; later ones win)")
	}
	return cmd
}

func (o *serverOptions) validate() error {
	for _, r := range []struct{ name, v string }{
		{"--data-dir", o.dataDir}, {"--node-name", o.nodeName}, {"--node-ip", o.nodeIP},
		{"--ca-cert", o.caCert}, {"--ca-key", o.caKey}, {"--etcd-ca-cert", o.etcdCACert},
		{"--etcd-ca-key", o.etcdCAKey}, {"--service-account-key", o.saKey},
		{"--service-account-public-key", o.saPub},
	} {
		if r.v == "" {
			return fmt.Errorf("%s is required", r.name)
		}
	}
	if net.ParseIP(o.nodeIP) == nil {
		return fmt.Errorf("--node-ip: %q is not an IP address", o.nodeIP)
	}
	if o.bindAddress == "" {
		o.bindAddress = o.nodeIP
	}
	for _, c := range []string{o.clusterCIDR, o.serviceCIDR} {
		if _, _, err := net.ParseCIDR(c); err != nil {
			return fmt.Errorf("%q: %v", c, err)
		}
	}
	if net.ParseIP(o.clusterDNS) == nil {
		return fmt.Errorf("--cluster-dns: %q is not an IP address", o.clusterDNS)
	}
	switch o.snapshotter {
	case "auto", "overlayfs", "native":
	default:
		return fmt.Errorf("--snapshotter: expected overlayfs, native or auto, got %q", o.snapshotter)
	}
	return nil
}

// node is the running node's layout: every path the components use.
type node struct {
	o        *serverOptions
	root     string // the unpacked localkube component (bin/, lib/, cni/, images/)
	tls      string
	conf     string
	logs     string
	ca       *authority
	etcdCA   *authority
	env      []string
	sup      *supervisor
	apiLocal string // https://127.0.0.1:port (or the bind address)
}

func runServer(o *serverOptions) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	exe, _ = filepath.EvalSymlinks(exe)
	n := &node{
		o:    o,
		root: filepath.Dir(filepath.Dir(exe)),
		tls:  filepath.Join(o.dataDir, "localkube", "tls"),
		conf: filepath.Join(o.dataDir, "localkube", "conf"),
		logs: filepath.Join(o.dataDir, "localkube", "logs"),
	}
	logf("localkube %s (Kubernetes %s) node %s at %s, data %s", version.Get().GitVersion, version.Get().GitVersion, o.nodeName, o.nodeIP, o.dataDir)
	for _, d := range []string{n.tls, n.conf, n.logs, o.runDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// What a killed localkube left: its components' down record.
	os.Remove(filepath.Join(o.dataDir, "localkube", "down"))
	if n.ca, err = loadAuthority(o.caCert, o.caKey); err != nil {
		return fmt.Errorf("the cluster CA: %v", err)
	}
	if n.etcdCA, err = loadAuthority(o.etcdCACert, o.etcdCAKey); err != nil {
		return fmt.Errorf("etcd's CA: %v", err)
	}
	if err := n.certificates(); err != nil {
		return err
	}
	if err := n.environment(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n.sup = newSupervisor(n.logs, n.env)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		logf("%v: stopping", s)
		n.sup.shutdown(fmt.Sprintf("localkube got %v", s))
		cancel()
	}()
	if err := n.start(ctx); err != nil {
		reason := n.sup.shutdown(err.Error())
		return fmt.Errorf("%s", reason)
	}
	logf("node %s is up: every component runs", o.nodeName)
	go n.watchImages(ctx)
	reason := n.sup.wait()
	if reason != "" && !strings.HasPrefix(reason, "localkube got") {
		return fmt.Errorf("%s: the node is down (every component stopped); `kubestrap start` starts it again", reason)
	}
	logf("stopped")
	return nil
}

// start runs the components in order, each once the one before answers.
func (n *node) start(ctx context.Context) error {
	o := n.o
	if err := n.sup.start("etcd", filepath.Join(n.root, "bin", "etcd"), n.etcdArgs()); err != nil {
		return err
	}
	if err := n.waitHTTPS(ctx, "etcd", "https://127.0.0.1:2379/health", "etcd-client", 60*time.Second); err != nil {
		return err
	}
	snap, err := n.containerdConfig()
	if err != nil {
		return err
	}
	if err := n.sup.start("containerd", filepath.Join(n.root, "bin", "containerd"), n.with("containerd", []string{"--config", filepath.Join(n.conf, "containerd.toml")})); err != nil {
		return err
	}
	if err := n.waitSocket(ctx, "containerd", n.containerdSocket(), 30*time.Second); err != nil {
		return err
	}
	if err := n.importImages(snap, []string{filepath.Join(n.root, "images")}); err != nil {
		return err
	}
	if o.imagesDir != "" {
		if err := n.importImages(snap, []string{o.imagesDir}); err != nil {
			logf("warning: %v", err)
		}
	}
	if err := n.guardServiceRange(); err != nil {
		return err
	}
	self := n.localkube()
	if err := n.sup.start("kube-apiserver", self, append([]string{"kube-apiserver"}, n.apiserverArgs()...)); err != nil {
		return err
	}
	if err := n.waitHTTPS(ctx, "kube-apiserver", n.apiLocal+"/readyz", "localkube", 120*time.Second); err != nil {
		return err
	}
	if err := n.bootstrapObjects(ctx); err != nil {
		return err
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"kube-controller-manager", n.controllerManagerArgs()},
		{"kube-scheduler", n.schedulerArgs()},
		{"kubelet", n.kubeletArgs()},
		{"kube-proxy", n.proxyArgs()},
		{"dns", n.dnsArgs()},
	} {
		if err := n.sup.start(c.name, self, append([]string{c.name}, c.args...)); err != nil {
			return err
		}
	}
	return n.podNetwork(ctx)
}

// guardServiceRange keeps ClusterIP traffic on the node: until kube-proxy
// has written a Service's rules (and for an address no Service has), a
// packet for the service range would follow the default route off the
// machine. A chain in the filter table's FORWARD and OUTPUT rejects it;
// what kube-proxy translated has a pod's address by then and passes. (The
// native driver removes KUBE- chains and the rules naming them at stop.)
func (n *node) guardServiceRange() error {
	const chain = "KUBE-LOCALKUBE-GUARD"
	iptables, err := lookPath("iptables", n.envPath())
	if err != nil {
		return err
	}
	ipt := func(args ...string) error {
		cmd := exec.Command(iptables, append([]string{"-w", "5"}, args...)...)
		cmd.Env = n.env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if ipt("-n", "-L", chain) != nil {
		if err := ipt("-N", chain); err != nil {
			return err
		}
	}
	if err := ipt("-F", chain); err != nil {
		return err
	}
	if err := ipt("-A", chain, "-j", "REJECT", "--reject-with", "icmp-net-unreachable"); err != nil {
		return err
	}
	for _, hook := range []string{"FORWARD", "OUTPUT"} {
		rule := []string{hook, "-d", n.o.serviceCIDR, "-m", "comment", "--comment", "localkube: ClusterIPs never leave the node", "-j", chain}
		if ipt(append([]string{"-C"}, rule...)...) != nil {
			if err := ipt(append([]string{"-I", hook, "1"}, rule[1:]...)...); err != nil {
				return err
			}
		}
	}
	return nil
}

func (n *node) localkube() string {
	exe, _ := os.Executable()
	return exe
}

// with appends the run section's extra flags for a component.
func (n *node) with(component string, args []string) []string {
	if v := n.o.extra[component]; v != nil {
		for _, a := range *v {
			if !strings.HasPrefix(a, "-") {
				a = "--" + a
			}
			args = append(args, a)
		}
	}
	return args
}

func (n *node) certificates() error {
	o := n.o
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP(o.nodeIP)}
	if ip := net.ParseIP(o.bindAddress); ip != nil && !ip.IsUnspecified() {
		ips = append(ips, ip)
	}
	_, svc, _ := net.ParseCIDR(o.serviceCIDR)
	first := append(net.IP(nil), svc.IP.To4()...)
	first[3]++
	ips = append(ips, first)
	dns := []string{"localhost", o.nodeName, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + o.clusterDomain}
	for _, san := range o.tlsSANs {
		if ip := net.ParseIP(san); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, san)
		}
	}
	nodeIPs := []net.IP{net.ParseIP(o.nodeIP), net.ParseIP("127.0.0.1")}
	leaves := []struct {
		ca *authority
		l  leaf
	}{
		{n.ca, leaf{name: "apiserver", cn: "kube-apiserver", server: true, dns: dns, ips: ips}},
		{n.ca, leaf{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true}},
		{n.ca, leaf{name: "controller-manager", cn: "system:kube-controller-manager", client: true}},
		{n.ca, leaf{name: "scheduler", cn: "system:kube-scheduler", client: true}},
		{n.ca, leaf{name: "kubelet-client", cn: "system:node:" + o.nodeName, orgs: []string{"system:nodes"}, client: true}},
		{n.ca, leaf{name: "kubelet", cn: o.nodeName, server: true, dns: []string{o.nodeName, "localhost"}, ips: nodeIPs}},
		{n.ca, leaf{name: "kube-proxy", cn: "system:kube-proxy", client: true}},
		{n.ca, leaf{name: "localkube", cn: "system:localkube", orgs: []string{"system:masters"}, client: true}},
		{n.ca, leaf{name: "dns", cn: "localkube:dns", client: true}},
		{n.etcdCA, leaf{name: "etcd-server", cn: "etcd", server: true, client: true, dns: []string{"localhost"}, ips: []net.IP{net.ParseIP("127.0.0.1")}}},
		{n.etcdCA, leaf{name: "etcd-client", cn: "kube-apiserver-etcd-client", client: true}},
	}
	for _, c := range leaves {
		if err := c.ca.issue(n.tls, c.l); err != nil {
			return err
		}
	}
	n.apiLocal = fmt.Sprintf("https://%s", net.JoinHostPort(n.apiHost(), fmt.Sprint(o.port)))
	for _, k := range []string{"controller-manager", "scheduler", "kubelet-client", "kube-proxy", "localkube", "dns"} {
		if err := kubeconfig(filepath.Join(n.conf, k+".kubeconfig"), n.apiLocal, o.caCert, n.file(k+".crt"), n.file(k+".key")); err != nil {
			return err
		}
	}
	return nil
}

// apiHost is where local components reach the apiserver.
func (n *node) apiHost() string {
	if ip := net.ParseIP(n.o.bindAddress); ip != nil && !ip.IsUnspecified() {
		return n.o.bindAddress
	}
	return "127.0.0.1"
}

func (n *node) file(name string) string { return filepath.Join(n.tls, name) }

// environment: the components' PATH puts localkube's own programs first,
// and its iptables only where the machine has none (a container's rootfs):
// on a host, kube-proxy must write the same tables as the host's iptables.
func (n *node) environment() error {
	path := filepath.Join(n.root, "bin") + ":" + os.Getenv("PATH")
	if path == filepath.Join(n.root, "bin")+":" {
		path += "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			env = append(env, kv)
		}
	}
	if _, err := lookPath("iptables", os.Getenv("PATH")); err != nil {
		dir, err := n.bundledIptables()
		if err != nil {
			return err
		}
		path += ":" + dir
		env = append(env, "XTABLES_LIBDIR="+filepath.Join(n.root, "lib", "xtables"))
	}
	n.env = append(env, "PATH="+path)
	return nil
}

// bundledIptables links iptables, iptables-save, ... to the bundled nft
// variant (the legacy one where the kernel has no nf_tables).
func (n *node) bundledIptables() (string, error) {
	dir := filepath.Join(n.o.runDir, "xtables")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	multi := "xtables-nft-multi"
	if raw, err := ioutil.ReadFile("/proc/net/ip_tables_names"); err == nil && len(raw) > 0 {
		if _, err := os.Stat("/sys/module/nf_tables"); err != nil {
			multi = "xtables-legacy-multi"
		}
	}
	logf("iptables: the machine has none on PATH; using the bundled %s", multi)
	for _, name := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		link := filepath.Join(dir, name)
		os.Remove(link)
		if err := os.Symlink(filepath.Join(n.root, "bin", multi), link); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// envPath is the components' PATH (exec.Command looks in localkube's own).
func (n *node) envPath() string {
	for _, kv := range n.env {
		if strings.HasPrefix(kv, "PATH=") {
			return kv[len("PATH="):]
		}
	}
	return ""
}

func lookPath(name, path string) (string, error) {
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func logf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "%s localkube: %s\n", time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), fmt.Sprintf(format, args...))
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the Kubernetes version localkube was built from",
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Println(version.Get().GitVersion)
		},
	}
}
