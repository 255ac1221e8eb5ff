package main

// The cluster DNS server, after the Kubernetes DNS-Based Service Discovery
// specification (kubernetes/dns docs/specification.md, version 1.1.0): A
// and AAAA records for ClusterIP Services and for each ready address of a
// headless Service, A records for a headless Service's named endpoints,
// SRV records for named ports, PTR records for both, CNAMEs for
// ExternalName Services and `dns-version.<zone>`; names outside the zone
// are forwarded to the machine's resolvers. Services and Endpoints come
// from the apiserver through client-go's informers.

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const dnsTTL = 5

type dnsOptions struct {
	kubeconfig string
	listen     string
	domain     string
	resolvConf string
}

func newDNSCommand() *cobra.Command {
	o := &dnsOptions{}
	cmd := &cobra.Command{
		Use:          "dns",
		Short:        "Serve the cluster's DNS from the apiserver's Services and Endpoints",
		SilenceUsage: true,
		RunE:         func(cmd *cobra.Command, args []string) error { return runDNS(o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "how to reach the apiserver")
	f.StringVar(&o.listen, "listen", "127.0.0.1:10053", "address:port to serve on (UDP and TCP)")
	f.StringVar(&o.domain, "domain", "cluster.local", "the cluster's domain")
	f.StringVar(&o.resolvConf, "resolv-conf", "/etc/resolv.conf", "where the resolvers for other names are")
	return cmd
}

type dnsServer struct {
	zone      string // "cluster.local."
	services  listers.ServiceLister
	endpoints listers.EndpointsLister
	synced    func() bool
	upstreams []string
	self      string
}

func runDNS(o *dnsOptions) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	svcInf := factory.Core().V1().Services()
	epInf := factory.Core().V1().Endpoints()
	s := &dnsServer{
		zone:      dns.Fqdn(strings.ToLower(o.domain)),
		services:  svcInf.Lister(),
		endpoints: epInf.Lister(),
		self:      o.listen,
	}
	svcSynced, epSynced := svcInf.Informer().HasSynced, epInf.Informer().HasSynced
	s.synced = func() bool { return svcSynced() && epSynced() }
	stop := make(chan struct{})
	factory.Start(stop)
	s.upstreams = upstreams(o.resolvConf, o.listen)
	logf("dns: zone %s on %s (udp, tcp), other names to %v", s.zone, o.listen, s.upstreams)

	errs := make(chan error, 2)
	var servers []*dns.Server
	for _, network := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: o.listen, Net: network, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
		servers = append(servers, srv)
		go func() { errs <- srv.ListenAndServe() }()
	}
	if !cache.WaitForCacheSync(stop, s.synced) {
		return fmt.Errorf("dns: the Services and Endpoints caches never synced")
	}
	logf("dns: Services and Endpoints synced")
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errs:
		return fmt.Errorf("dns: serving on %s: %v", o.listen, err)
	case <-sigs:
		close(stop)
		for _, srv := range servers {
			_ = srv.Shutdown()
		}
		return nil
	}
}

// upstreams are the nameservers of a resolv.conf, without the DNS server's
// own address.
func upstreams(resolvConf, self string) []string {
	raw, err := readCapped(resolvConf, 64<<10)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" && net.ParseIP(f[1]) != nil {
			addr := net.JoinHostPort(f[1], "53")
			if addr != self {
				out = append(out, addr)
			}
		}
	}
	return out
}

func (s *dnsServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeNotImplemented)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	var m *dns.Msg
	switch {
	case dns.IsSubDomain(s.zone, name):
		m = s.answerZone(req, name, q.Qtype)
	case strings.HasSuffix(name, ".in-addr.arpa.") || strings.HasSuffix(name, ".ip6.arpa."):
		m = s.answerReverse(req, name)
		if m == nil {
			m = s.forward(w, req)
		}
	default:
		m = s.forward(w, req)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := 512
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		truncate(m, size)
	}
	_ = w.WriteMsg(m)
}

// truncate makes an answer fit a UDP reply: the additional section goes
// first; if it is still too long, the answer is sent empty with TC set, and
// the client asks again over TCP.
func truncate(m *dns.Msg, size int) {
	if m.Len() <= size {
		return
	}
	m.Extra = nil
	if m.Len() <= size {
		return
	}
	m.Truncated = true
	m.Answer, m.Ns = nil, nil
}

func (s *dnsServer) reply(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	return m
}

func (s *dnsServer) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: dnsTTL},
		Ns:      "ns.dns." + s.zone,
		Mbox:    "hostmaster." + s.zone,
		Serial:  uint32(time.Now().Unix()),
		Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: dnsTTL,
	}
}

func (s *dnsServer) nxdomain(req *dns.Msg) *dns.Msg {
	m := s.reply(req)
	m.Rcode = dns.RcodeNameError
	m.Ns = []dns.RR{s.soa()}
	return m
}

// nodata: the name exists, with no record of the asked type.
func (s *dnsServer) nodata(req *dns.Msg) *dns.Msg {
	m := s.reply(req)
	m.Ns = []dns.RR{s.soa()}
	return m
}

func hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: dnsTTL}
}

// addrRR is an A or AAAA record for ip, if it is of the asked type.
func addrRR(name string, ip net.IP, qtype uint16) dns.RR {
	if v4 := ip.To4(); v4 != nil {
		if qtype == dns.TypeA || qtype == dns.TypeANY {
			return &dns.A{Hdr: hdr(name, dns.TypeA), A: v4}
		}
		return nil
	}
	if qtype == dns.TypeAAAA || qtype == dns.TypeANY {
		return &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA), AAAA: ip}
	}
	return nil
}

func (s *dnsServer) answerZone(req *dns.Msg, name string, qtype uint16) *dns.Msg {
	if !s.synced() {
		m := s.reply(req)
		m.Rcode = dns.RcodeServerFailure
		return m
	}
	rel := strings.TrimSuffix(strings.TrimSuffix(name, s.zone), ".")
	if rel == "" {
		m := s.reply(req)
		switch qtype {
		case dns.TypeSOA:
			m.Answer = []dns.RR{s.soa()}
		case dns.TypeNS:
			m.Answer = []dns.RR{&dns.NS{Hdr: hdr(s.zone, dns.TypeNS), Ns: "ns.dns." + s.zone}}
		default:
			m.Ns = []dns.RR{s.soa()}
		}
		return m
	}
	if rel == "dns-version" {
		if qtype != dns.TypeTXT {
			return s.nodata(req)
		}
		m := s.reply(req)
		m.Answer = []dns.RR{&dns.TXT{Hdr: hdr(name, dns.TypeTXT), Txt: []string{"1.1.0"}}}
		return m
	}
	labels := strings.Split(rel, ".")
	last := labels[len(labels)-1]
	switch {
	case last == "svc":
		return s.answerService(req, name, labels[:len(labels)-1], qtype)
	case last == "pod" && len(labels) == 3:
		// <a-b-c-d>.<namespace>.pod.<zone>: the address the name spells.
		ip := net.ParseIP(strings.Replace(labels[0], "-", ".", 3))
		if ip == nil || ip.To4() == nil {
			ip = net.ParseIP(strings.Replace(labels[0], "-", ":", -1))
		}
		if ip == nil {
			return s.nxdomain(req)
		}
		m := s.reply(req)
		if rr := addrRR(name, ip, qtype); rr != nil {
			m.Answer = []dns.RR{rr}
		} else {
			m.Ns = []dns.RR{s.soa()}
		}
		return m
	}
	return s.nxdomain(req)
}

// answerService answers names under svc.<zone>; labels are the ones before
// "svc", e.g. [my-svc my-ns] or [_http _tcp my-svc my-ns] or [host my-svc my-ns].
func (s *dnsServer) answerService(req *dns.Msg, name string, labels []string, qtype uint16) *dns.Msg {
	switch len(labels) {
	case 0:
		return s.nodata(req)
	case 1:
		// <ns>.svc.<zone>: an empty non-terminal while the namespace has Services.
		if list, _ := s.services.Services(labels[0]).List(everything()); len(list) > 0 {
			return s.nodata(req)
		}
		return s.nxdomain(req)
	}
	n := len(labels)
	ns, svcName := labels[n-1], labels[n-2]
	svc, err := s.services.Services(ns).Get(svcName)
	if err != nil {
		return s.nxdomain(req)
	}
	base := svcName + "." + ns + ".svc." + s.zone
	m := s.reply(req)
	switch n {
	case 2:
		s.serviceRecords(m, svc, base, name, qtype)
	case 3:
		// <hostname>.<svc>.<ns>.svc.<zone>: one endpoint of a headless Service.
		if !headless(svc) {
			return s.nxdomain(req)
		}
		found := false
		for _, a := range s.addresses(svc) {
			if endpointName(a) == labels[0] {
				found = true
				if rr := addrRR(name, net.ParseIP(a.IP), qtype); rr != nil {
					m.Answer = append(m.Answer, rr)
				}
			}
		}
		if !found {
			return s.nxdomain(req)
		}
	case 4:
		// _<port>._<proto>.<svc>.<ns>.svc.<zone>
		if !strings.HasPrefix(labels[0], "_") || !strings.HasPrefix(labels[1], "_") {
			return s.nxdomain(req)
		}
		port, proto := labels[0][1:], labels[1][1:]
		found := false
		for _, p := range svc.Spec.Ports {
			if strings.ToLower(p.Name) != port || strings.ToLower(string(p.Protocol)) != proto || p.Name == "" {
				continue
			}
			found = true
			if qtype == dns.TypeSRV || qtype == dns.TypeANY {
				s.srv(m, svc, base, name, p)
			}
		}
		if !found {
			return s.nxdomain(req)
		}
	default:
		return s.nxdomain(req)
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{s.soa()}
	}
	return m
}

func headless(svc *corev1.Service) bool {
	return svc.Spec.ClusterIP == corev1.ClusterIPNone
}

func everything() labels.Selector { return labels.Everything() }

// serviceRecords: a ClusterIP Service's address, a headless one's ready
// endpoint addresses, an ExternalName's CNAME, and SRV records for every
// named port when SRV is asked for the Service's own name.
func (s *dnsServer) serviceRecords(m *dns.Msg, svc *corev1.Service, base, name string, qtype uint16) {
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME), Target: dns.Fqdn(svc.Spec.ExternalName)})
		return
	case qtype == dns.TypeSRV:
		for _, p := range svc.Spec.Ports {
			if p.Name != "" {
				s.srv(m, svc, base, name, p)
			}
		}
		return
	case headless(svc):
		for _, a := range s.addresses(svc) {
			if rr := addrRR(name, net.ParseIP(a.IP), qtype); rr != nil {
				m.Answer = append(m.Answer, rr)
			}
		}
	default:
		for _, ip := range clusterIPs(svc) {
			if rr := addrRR(name, ip, qtype); rr != nil {
				m.Answer = append(m.Answer, rr)
			}
		}
	}
}

func clusterIPs(svc *corev1.Service) []net.IP {
	var out []net.IP
	seen := map[string]bool{}
	for _, s := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
		if ip := net.ParseIP(s); ip != nil && !seen[s] {
			seen[s] = true
			out = append(out, ip)
		}
	}
	return out
}

// srv adds the SRV records of one port: the Service's own name for a
// ClusterIP Service, one per ready endpoint for a headless one, each with
// its address in the additional section.
func (s *dnsServer) srv(m *dns.Msg, svc *corev1.Service, base, name string, p corev1.ServicePort) {
	if !headless(svc) {
		m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr(name, dns.TypeSRV), Priority: 0, Weight: 100, Port: uint16(p.Port), Target: base})
		for _, ip := range clusterIPs(svc) {
			if rr := addrRR(base, ip, dns.TypeANY); rr != nil {
				m.Extra = append(m.Extra, rr)
			}
		}
		return
	}
	eps, err := s.endpoints.Endpoints(svc.Namespace).Get(svc.Name)
	if err != nil {
		return
	}
	for _, sub := range eps.Subsets {
		for _, ep := range sub.Ports {
			if ep.Name != p.Name || ep.Protocol != p.Protocol {
				continue
			}
			for _, a := range sub.Addresses {
				target := endpointName(a) + "." + base
				m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr(name, dns.TypeSRV), Priority: 0, Weight: 100, Port: uint16(ep.Port), Target: target})
				if rr := addrRR(target, net.ParseIP(a.IP), dns.TypeANY); rr != nil {
					m.Extra = append(m.Extra, rr)
				}
			}
		}
	}
}

// addresses are the ready addresses of a Service's Endpoints.
func (s *dnsServer) addresses(svc *corev1.Service) []corev1.EndpointAddress {
	eps, err := s.endpoints.Endpoints(svc.Namespace).Get(svc.Name)
	if err != nil {
		return nil
	}
	var out []corev1.EndpointAddress
	for _, sub := range eps.Subsets {
		out = append(out, sub.Addresses...)
	}
	return out
}

// endpointName is an endpoint's hostname, or its address with dashes.
func endpointName(a corev1.EndpointAddress) string {
	if a.Hostname != "" {
		return strings.ToLower(a.Hostname)
	}
	return strings.NewReplacer(".", "-", ":", "-").Replace(a.IP)
}

// answerReverse answers a PTR query for a ClusterIP or an endpoint address
// of a headless Service; nil when the address is no Service's.
func (s *dnsServer) answerReverse(req *dns.Msg, name string) *dns.Msg {
	ip := reverseIP(name)
	if ip == nil || !s.synced() {
		return nil
	}
	svcs, _ := s.services.List(everything())
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Namespace+"/"+svcs[i].Name < svcs[j].Namespace+"/"+svcs[j].Name })
	var targets []string
	for _, svc := range svcs {
		base := svc.Name + "." + svc.Namespace + ".svc." + s.zone
		if headless(svc) {
			for _, a := range s.addresses(svc) {
				if net.ParseIP(a.IP).Equal(ip) {
					targets = append(targets, endpointName(a)+"."+base)
				}
			}
			continue
		}
		for _, c := range clusterIPs(svc) {
			if c.Equal(ip) {
				targets = append(targets, base)
			}
		}
	}
	if len(targets) == 0 {
		return nil
	}
	m := s.reply(req)
	for _, t := range targets {
		m.Answer = append(m.Answer, &dns.PTR{Hdr: hdr(name, dns.TypePTR), Ptr: t})
	}
	return m
}

func reverseIP(name string) net.IP {
	if strings.HasSuffix(name, ".in-addr.arpa.") {
		parts := strings.Split(strings.TrimSuffix(name, ".in-addr.arpa."), ".")
		if len(parts) != 4 {
			return nil
		}
		for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
			parts[i], parts[j] = parts[j], parts[i]
		}
		return net.ParseIP(strings.Join(parts, ".")).To4()
	}
	nibbles := strings.Split(strings.TrimSuffix(name, ".ip6.arpa."), ".")
	if len(nibbles) != 32 {
		return nil
	}
	var b strings.Builder
	for i := len(nibbles) - 1; i >= 0; i-- {
		b.WriteString(nibbles[i])
		if i%4 == 0 && i > 0 {
			b.WriteString(":")
		}
	}
	return net.ParseIP(b.String())
}

// forward asks the machine's resolvers, over the transport the question
// came by (UDP answers that were cut short are asked again over TCP).
func (s *dnsServer) forward(w dns.ResponseWriter, req *dns.Msg) *dns.Msg {
	network := "udp"
	if _, tcp := w.RemoteAddr().(*net.TCPAddr); tcp {
		network = "tcp"
	}
	for _, up := range s.upstreams {
		c := &dns.Client{Net: network, Timeout: 2 * time.Second}
		resp, _, err := c.Exchange(req, up)
		if err == nil && resp.Truncated && network == "udp" {
			c.Net = "tcp"
			resp, _, err = c.Exchange(req, up)
		}
		if err == nil && resp != nil {
			resp.Id = req.Id
			return resp
		}
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	return m
}
