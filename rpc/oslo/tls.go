package oslo

import (
	"crypto/fips140"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// TLSOptions are nova.conf's [oslo_messaging_rabbit] ssl options, under
// oslo's names. As in oslo (its ConfigOptsProxy), the transport URL's query
// overrides each of them: rabbit://…/?ssl=1&ssl_ca_file=/etc/ca.pem.
//
// ferry verifies more than oslo 14 does by default: the broker's chain
// always (against CAFile, or the system's roots when it is empty; oslo
// with ssl_version set and no ssl_ca_file verifies nothing), and its
// certificate's names always against the host of the URL being dialled
// (oslo only with ssl_enforce_hostname_verification, default false on
// stable branches). A broker whose certificate does not name the host in
// transport_url is refused, with an error that says so.
type TLSOptions struct {
	Enabled  bool   // ssl; also on with an amqps:// or kombu+amqps:// URL
	CAFile   string // ssl_ca_file: PEM CA certificates the broker's chain must end in; "" = the system's roots
	CertFile string // ssl_cert_file: PEM client certificate (chain), with KeyFile
	KeyFile  string // ssl_key_file: PEM private key of CertFile
	// Version is ssl_version: "" or SSLv23 negotiate TLS 1.2 or 1.3;
	// TLSv1_2 pins TLS 1.2. TLSv1 and TLSv1_1 (which oslo accepts) are
	// refused: crypto/tls does not offer them without a GODEBUG, and a
	// broker that speaks only them is not one to send credentials to.
	Version string
	// EnforceFIPS is ssl_enforce_fips_mode: ferryd must run in Go's FIPS
	// 140-3 mode (GODEBUG=fips140=on), which restricts crypto/tls to
	// approved algorithms. oslo, on a Python without ssl.FIPS_mode (Debian
	// 12's), refuses to start instead.
	EnforceFIPS bool
}

// tlsQueryKeys are the query options TLSOptions reads from a URL.
var tlsQueryKeys = []string{"ssl", "ssl_ca_file", "ssl_cert_file", "ssl_key_file", "ssl_version", "ssl_enforce_fips_mode"}

// TLSOptions returns base with the URL's own ssl options applied over it,
// as oslo does; an amqps scheme turns TLS on. A boolean oslo would not
// parse is an error.
func (u TransportURL) TLSOptions(base TLSOptions) (TLSOptions, error) {
	o := base
	if u.Scheme == "amqps" || u.Scheme == "kombu+amqps" {
		o.Enabled = true
	}
	var errs []error
	for _, k := range tlsQueryKeys {
		v, ok := u.Query[k]
		if !ok {
			continue
		}
		switch k {
		case "ssl", "ssl_enforce_fips_mode":
			b, err := parseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("transport_url ?%s=%s: %w", k, v, err))
				continue
			}
			if k == "ssl" {
				o.Enabled = b
			} else {
				o.EnforceFIPS = b
			}
		case "ssl_ca_file":
			o.CAFile = v
		case "ssl_cert_file":
			o.CertFile = v
		case "ssl_key_file":
			o.KeyFile = v
		case "ssl_version":
			o.Version = v
		}
	}
	return o, errors.Join(errs...)
}

// parseBool reads a boolean as oslo.config does.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true", "1", "on", "yes":
		return true, nil
	case "false", "0", "off", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (true/false, 1/0, on/off, yes/no)", s)
}

// Check lists every problem with o, each naming its option and file:
// a file that cannot be read or holds no PEM certificate or key, a key
// without a certificate or the reverse, an ssl_version ferry does not
// speak, FIPS mode asked for and off. Options are read only with TLS on,
// as oslo reads them.
func (o TLSOptions) Check() []error {
	if !o.Enabled {
		return nil
	}
	var errs []error
	if o.CAFile != "" {
		if _, err := loadCA(o.CAFile); err != nil {
			errs = append(errs, err)
		}
	}
	switch {
	case o.CertFile != "" && o.KeyFile == "":
		errs = append(errs, fmt.Errorf("ssl_cert_file %s: set without ssl_key_file: the client certificate needs its key", o.CertFile))
	case o.KeyFile != "" && o.CertFile == "":
		errs = append(errs, fmt.Errorf("ssl_key_file %s: set without ssl_cert_file: the key needs its client certificate", o.KeyFile))
	case o.CertFile != "":
		if _, err := loadKeyPair(o.CertFile, o.KeyFile); err != nil {
			errs = append(errs, err...)
		}
	}
	if _, err := tlsVersion(o.Version); err != nil {
		errs = append(errs, err)
	}
	if o.EnforceFIPS && !fips140.Enabled() {
		errs = append(errs, errors.New("ssl_enforce_fips_mode: Go's FIPS 140-3 mode is off: start ferryd with GODEBUG=fips140=on"))
	}
	return errs
}

// tlsVersion is ssl_version as the versions crypto/tls may negotiate.
func tlsVersion(v string) (maxVersion uint16, err error) {
	switch strings.ToLower(v) {
	case "", "sslv23":
		return 0, nil
	case "tlsv1_2":
		return tls.VersionTLS12, nil
	case "tlsv1", "tlsv1_1":
		return 0, fmt.Errorf("ssl_version %s: ferry speaks TLS 1.2 and 1.3 only; use TLSv1_2 or SSLv23 (the broker's newest)", v)
	case "sslv2", "sslv3":
		return 0, fmt.Errorf("ssl_version %s: not offered (neither by Python's ssl module, so oslo refuses it too); use TLSv1_2 or SSLv23", v)
	}
	return 0, fmt.Errorf("ssl_version %q: unknown; oslo's are SSLv23, TLSv1_2 (and TLSv1, TLSv1_1, which ferry refuses)", v)
}

func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssl_ca_file %s: %w", path, unwrapPath(err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ssl_ca_file %s: holds no PEM certificate", path)
	}
	return pool, nil
}

// loadKeyPair reads the client certificate and key, naming each file that
// cannot be read before trying them as a pair.
func loadKeyPair(cert, key string) (tls.Certificate, []error) {
	var errs []error
	for _, f := range []struct{ opt, path string }{{"ssl_cert_file", cert}, {"ssl_key_file", key}} {
		if _, err := os.ReadFile(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", f.opt, f.path, unwrapPath(err)))
		}
	}
	if len(errs) > 0 {
		return tls.Certificate{}, errs
	}
	c, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		// The error says which: no certificate, no key, or not a pair. It
		// never contains the key.
		return tls.Certificate{}, []error{fmt.Errorf("ssl_cert_file %s / ssl_key_file %s: %w", cert, key, err)}
	}
	return c, nil
}

// unwrapPath drops the *fs.PathError's own copy of the path, which the
// message names already ("open /x: no such file" → "no such file").
func unwrapPath(err error) error {
	if pe, ok := errors.AsType[*os.PathError](err); ok {
		return pe.Err
	}
	return err
}

// config builds the client configuration for one broker host: the chain
// verified against the CA (or the system's roots) and the certificate's
// names against host. Files are read at each dial, so a renewed
// certificate is taken at the next reconnect.
func (o TLSOptions) config(host string) (*tls.Config, error) {
	if errs := o.Check(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	maxV, _ := tlsVersion(o.Version)
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: maxV, ServerName: host}
	if o.CAFile != "" {
		pool, err := loadCA(o.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if o.CertFile != "" {
		c, errs := loadKeyPair(o.CertFile, o.KeyFile)
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

// certError explains a broker certificate that ferry refused, or returns
// nil for any other error.
func (o TLSOptions) certError(host string, err error) error {
	ve, ok := errors.AsType[*tls.CertificateVerificationError](err)
	if !ok {
		return nil
	}
	roots := "the system's roots (ssl_ca_file is not set)"
	if o.CAFile != "" {
		roots = "ssl_ca_file " + o.CAFile
	}
	if _, ok := errors.AsType[x509.HostnameError](ve.Err); ok {
		return fmt.Errorf("the broker's certificate does not name %s, the host in transport_url (ferry always verifies it, "+
			"as oslo does with ssl_enforce_hostname_verification): %w", host, ve.Err)
	}
	return fmt.Errorf("the broker's certificate for %s is not trusted by %s: %w", host, roots, ve.Err)
}
