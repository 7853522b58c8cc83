// Package testpki makes throw-away certificate authorities for tests that
// need TLS peers: a CA, server certificates with the names a test chooses,
// client certificates, all written as PEM files the way an operator's
// would be (ssl_ca_file, ssl_cert_file, ssl_key_file; RabbitMQ's
// ssl_options). Keys are ECDSA P-256, so making them costs milliseconds.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority whose files live in Dir.
type CA struct {
	Dir  string
	File string // the CA certificate, PEM
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Pair is a certificate and its key, as files.
type Pair struct {
	Cert, Key string
}

// NewCA makes a CA named name and writes its certificate to dir/name.pem.
func NewCA(dir, name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{Dir: dir, File: filepath.Join(dir, name+".pem"), cert: cert, key: key}
	if err := writePEM(ca.File, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// Server issues a server certificate for names (DNS names or IP
// addresses), written as dir/<file>.pem and dir/<file>.key.
func (ca *CA) Server(file string, names ...string) (Pair, error) {
	return ca.issue(file, x509.ExtKeyUsageServerAuth, names)
}

// Client issues a client certificate with common name cn.
func (ca *CA) Client(file, cn string) (Pair, error) {
	return ca.issue(file, x509.ExtKeyUsageClientAuth, []string{cn})
}

func (ca *CA) issue(file string, usage x509.ExtKeyUsage, names []string) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	if len(names) == 0 {
		return Pair{}, fmt.Errorf("testpki: %s: no name", file)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		for _, n := range names {
			if ip := net.ParseIP(n); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, n)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Pair{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	p := Pair{Cert: filepath.Join(ca.Dir, file+".pem"), Key: filepath.Join(ca.Dir, file+".key")}
	if err := writePEM(p.Cert, "CERTIFICATE", der, 0o644); err != nil {
		return Pair{}, err
	}
	// 0644: the private broker node may run as another user than the test.
	if err := writePEM(p.Key, "PRIVATE KEY", kder, 0o644); err != nil {
		return Pair{}, err
	}
	return p, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func writePEM(path, kind string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), mode)
}
