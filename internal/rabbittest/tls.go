package rabbittest

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
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/freeport"
)

// Certs are PEM files of a throwaway certificate authority, a broker
// certificate it signed for 127.0.0.1 and localhost, and a client
// certificate it signed, written by GenerateCerts.
type Certs struct {
	CAFile                string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	// ClientCN is the client certificate's common name.
	ClientCN string
}

// GenerateCerts creates a fresh CA, server and client certificates (ECDSA
// P-256, valid for one day) in a temporary directory of the test.
func GenerateCerts(t testing.TB, clientCN string) *Certs {
	t.Helper()
	dir := t.TempDir()
	c, err := generateCerts(dir, clientCN)
	if err != nil {
		t.Fatalf("generate certificates: %v", err)
	}
	return c
}

func generateCerts(dir, clientCN string) (*Certs, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "forest test CA " + filepath.Base(dir)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	c := &Certs{
		CAFile:     filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
		ClientCN: clientCN,
	}
	if err := writePEM(c.CAFile, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, certFile, keyFile string, server bool) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if server {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyFile, "EC PRIVATE KEY", kb)
	}
	if err := leaf(2, "localhost", x509.ExtKeyUsageServerAuth, c.ServerCert, c.ServerKey, true); err != nil {
		return nil, err
	}
	if err := leaf(3, clientCN, x509.ExtKeyUsageClientAuth, c.ClientCert, c.ClientKey, false); err != nil {
		return nil, err
	}
	return c, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// TLSBroker is a private broker that also listens for amqps:// on TLSPort,
// presenting certs' server certificate and requiring a client certificate
// signed by certs' CA (verify_peer, fail_if_no_peer_cert).
type TLSBroker struct {
	*Broker
	// TLSPort is the amqps port on 127.0.0.1.
	TLSPort int
	// TLSURL is an amqps URL for the default vhost with the admin user.
	TLSURL string
}

// StartTLS starts a private broker with a TLS listener configured from
// certs, stopped on cleanup. The plain listener stays available (URL) for
// setting up topology.
func StartTLS(t testing.TB, certs *Certs) *TLSBroker {
	t.Helper()
	b := Start(t)
	// The harness's start writes a plain configuration and boots; restart
	// the node with the TLS listener added.
	ports, err := freeport.Ports(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.stopNode(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`listeners.ssl.1 = 127.0.0.1:%d
ssl_options.cacertfile = %s
ssl_options.certfile = %s
ssl_options.keyfile = %s
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
`, ports[0], certs.CAFile, certs.ServerCert, certs.ServerKey)
	f, err := os.OpenFile(filepath.Join(b.dir, "rabbitmq.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.boot(); err != nil {
		t.Fatalf("boot with TLS: %v", err)
	}
	u := url.URL{Scheme: "amqps", User: url.UserPassword(AdminUser, AdminPassword), Host: fmt.Sprintf("127.0.0.1:%d", ports[0]), Path: "/"}
	tb := &TLSBroker{Broker: b, TLSPort: ports[0], TLSURL: u.String()}
	// boot waits for the plain listener; the TLS one follows it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", tb.TLSPort), time.Second)
		if err == nil {
			c.Close()
			return tb
		}
		if time.Now().After(deadline) {
			t.Fatalf("TLS listener on %d not up: %v", tb.TLSPort, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
