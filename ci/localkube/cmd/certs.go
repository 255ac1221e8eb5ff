package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io/ioutil"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// authority is a CA kubestrap made (its certificate and key, placed under
// the data directory by the manifest's pki-files): localkube issues every
// component's serving and client certificate from it, as k3s does with a
// custom CA.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func loadAuthority(certFile, keyFile string) (*authority, error) {
	cert, err := readCert(certFile)
	if err != nil {
		return nil, err
	}
	key, err := readKey(keyFile)
	if err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key}, nil
}

func readPEM(file, want string) (*pem.Block, error) {
	raw, err := readCapped(file, 1<<20)
	if err != nil {
		return nil, err
	}
	for {
		var b *pem.Block
		b, raw = pem.Decode(raw)
		if b == nil {
			return nil, fmt.Errorf("%s: no %s PEM block", file, want)
		}
		if want == "" || b.Type == want || (want == "KEY" && len(b.Type) > 3 && b.Type[len(b.Type)-3:] == "KEY") {
			return b, nil
		}
	}
}

func readCert(file string) (*x509.Certificate, error) {
	b, err := readPEM(file, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	return c, nil
}

func readKey(file string) (crypto.Signer, error) {
	b, err := readPEM(file, "KEY")
	if err != nil {
		return nil, err
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("%s: not a PKCS#8, EC or PKCS#1 private key", file)
}

// readCapped reads at most max bytes of a file: a larger one is refused.
func readCapped(file string, max int64) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := ioutil.ReadAll(&limited{f, max + 1})
	if err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	if int64(len(raw)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, max)
	}
	return raw, nil
}

type limited struct {
	f *os.File
	n int64
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("too large")
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= int64(n)
	return n, err
}

// leaf says what one issued certificate is for.
type leaf struct {
	name   string // file stem under the tls directory
	cn     string
	orgs   []string
	server bool
	client bool
	dns    []string
	ips    []net.IP
}

// issue writes name.crt and name.key (0600) into dir, signed by the CA.
// Issued afresh at every start: nothing pins them, and the names and
// addresses they carry follow the node's.
func (a *authority) issue(dir string, l leaf) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: l.cn, Organization: l.orgs},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		DNSNames:              l.dns,
		IPAddresses:           l.ips,
	}
	if a.cert.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = a.cert.NotAfter
	}
	if l.server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return fmt.Errorf("issuing %s: %v", l.name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, l.name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, l.name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeAtomic writes a file through a temporary sibling, fsynced, renamed.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// kubeconfig writes a kubeconfig for one component's client certificate.
func kubeconfig(path, server, caFile, certFile, keyFile string) error {
	body := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: user
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: local
  context: {cluster: local, user: user}
current-context: local
`, server, caFile, certFile, keyFile)
	return writeAtomic(path, []byte(body), 0o600)
}
