package uplink_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/uplink"
)

// TestTLS runs against a broker whose TLS listener requires a client
// certificate: the publisher connects and publishes with the right CA and
// client certificate, and refuses to talk to a broker it cannot verify.
func TestTLS(t *testing.T) {
	certs := rabbittest.GenerateCerts(t, "forest-device")
	b := rabbittest.StartTLS(t, certs)
	leakCheck(t)
	rabbittest.FramesQueue(t, b.URL, "frames", nil)
	good := func() uplink.Options {
		o := testOptions(b.TLSURL)
		o.TLS = uplink.TLSOptions{CAFile: certs.CAFile, CertFile: certs.ClientCert, KeyFile: certs.ClientKey}
		return o
	}

	t.Run("trusted", func(t *testing.T) {
		leakCheck(t)
		o := good()
		o.TLS.ServerName = "localhost"
		p := start(t, o)
		waitState(t, p, uplink.StateConnected, 10*time.Second)
		msgs := frames(t, "tls", 20, 5000)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		l := newLedger()
		if err := deliverAll(ctx, t, p, msgs, 8, l); err != nil {
			t.Fatal(err)
		}
		checkDelivered(t, msgs, l, queued(t, b.URL, "frames"))
	})

	// refused runs a publisher that must never connect, and returns the
	// error it reports.
	refused := func(t *testing.T, o uplink.Options) error {
		t.Helper()
		p := start(t, o)
		deadline := time.Now().Add(10 * time.Second)
		for p.State().LastError == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // a few more attempts
		st := p.State()
		if st.State == uplink.StateConnected || st.LastError == nil {
			t.Fatalf("state %+v, want refused", st)
		}
		if _, err := p.Publish(context.Background(), frames(t, "no", 1, 10)); !errors.Is(err, uplink.ErrNotConnected) {
			t.Fatalf("Publish: %v, want ErrNotConnected", err)
		}
		return st.LastError
	}

	t.Run("untrusted server certificate", func(t *testing.T) {
		leakCheck(t)
		other := rabbittest.GenerateCerts(t, "forest-device")
		o := good()
		o.TLS.CAFile = other.CAFile // a CA that did not sign the broker
		err := refused(t, o)
		var ua x509.UnknownAuthorityError
		if !errors.As(err, &ua) {
			t.Errorf("error %v (%T), want x509.UnknownAuthorityError", err, errors.Unwrap(err))
		}
	})

	t.Run("wrong server name", func(t *testing.T) {
		leakCheck(t)
		o := good()
		o.TLS.ServerName = "broker.example.org"
		err := refused(t, o)
		var he x509.HostnameError
		if !errors.As(err, &he) {
			t.Errorf("error %v, want x509.HostnameError", err)
		}
	})

	t.Run("no client certificate", func(t *testing.T) {
		leakCheck(t)
		o := good()
		o.TLS.CertFile, o.TLS.KeyFile = "", ""
		refused(t, o)
	})

	t.Run("options", func(t *testing.T) {
		o := good()
		o.URL = b.URL // amqp:// with TLS options is a mistake
		if _, err := uplink.New(o); !errors.Is(err, uplink.ErrInvalidOptions) {
			t.Errorf("TLS options with amqp:// URL: %v", err)
		}
		o = good()
		o.TLS.CAFile = certs.ClientKey
		if _, err := uplink.New(o); !errors.Is(err, uplink.ErrInvalidOptions) {
			t.Errorf("CA file without certificates: %v", err)
		}
	})
}
