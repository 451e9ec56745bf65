package console

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// mailbox is a real SMTP server (go-smtp) on loopback that keeps what it
// receives.
type mailbox struct {
	mu   sync.Mutex
	msgs []received
	got  chan struct{}
	addr string
	tls  bool // a client used STARTTLS
}

type received struct {
	from string
	to   []string
	data string
}

type mbSession struct {
	mb  *mailbox
	c   *smtp.Conn
	cur received
}

func (m *mailbox) NewSession(c *smtp.Conn) (smtp.Session, error) { return &mbSession{mb: m, c: c}, nil }

func (s *mbSession) Reset()        { s.cur = received{} }
func (s *mbSession) Logout() error { return nil }
func (s *mbSession) Mail(from string, _ *smtp.MailOptions) error {
	s.cur.from = from
	return nil
}
func (s *mbSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.to = append(s.cur.to, to)
	return nil
}
func (s *mbSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.data = string(b)
	_, isTLS := s.c.TLSConnectionState()
	s.mb.mu.Lock()
	s.mb.msgs = append(s.mb.msgs, s.cur)
	s.mb.tls = s.mb.tls || isTLS
	s.mb.mu.Unlock()
	s.mb.got <- struct{}{}
	return nil
}

// selfSigned returns a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

func startMailbox(t *testing.T, cert tls.Certificate) *mailbox {
	mb := &mailbox{got: make(chan struct{}, 16)}
	s := smtp.NewServer(mb)
	s.Domain = "localhost"
	s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.ReadTimeout, s.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mb.addr = ln.Addr().String()
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return mb
}

func (m *mailbox) wait(t *testing.T, n int) []received {
	t.Helper()
	for {
		m.mu.Lock()
		if len(m.msgs) >= n {
			out := append([]received(nil), m.msgs...)
			m.mu.Unlock()
			return out
		}
		m.mu.Unlock()
		select {
		case <-m.got:
		case <-time.After(10 * time.Second):
			t.Fatalf("the SMTP server received %d messages, want %d", len(m.msgs), n)
		}
	}
}

func TestEmailNotifications(t *testing.T) {
	cert, pool := selfSigned(t)
	mb := startMailbox(t, cert)
	mailer, err := NewMailer(MailerOptions{URL: "smtp://" + mb.addr, RootCAs: pool, From: "balise@chus.example"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go mailer.Run(ctx)
	e := newEnv(t, func(o *Options) {
		o.Mailer = mailer
		o.NotifyTo = []string{"rsi@chus.example", "csio@chus.example"}
		o.BaseURL = "https://balise.chus.example:9465/"
	})
	id := e.submit(t, "10.0.0.1", "", `Justification confidentielle <b>`)
	msgs := mb.wait(t, 1)
	m := msgs[0]
	if m.from != "balise@chus.example" || strings.Join(m.to, ",") != "rsi@chus.example,csio@chus.example" {
		t.Fatalf("submission mail from %s to %v", m.from, m.to)
	}
	for _, want := range []string{"Subject: [Balise] Nouvelle demande " + id, "Nouvelle demande d'exception " + id,
		"New exception request " + id, "Facebook", "https://balise.chus.example:9465/requests/" + id} {
		if !strings.Contains(m.data, want) {
			t.Errorf("submission mail lacks %q:\n%s", want, m.data)
		}
	}
	if strings.Contains(m.data, "confidentielle") {
		t.Error("the submission mail carries the justification")
	}
	if !mb.tls {
		t.Error("the mail was not sent over STARTTLS")
	}
	c := e.client(t).mustLogin("rsi", officerPW)
	if code, body := c.do("POST", "/api/v1/requests/"+id+"/deny", map[string]string{"reason": "Pas un besoin professionnel"}, c.csrf); code != 200 {
		t.Fatalf("deny = %d %s", code, body)
	}
	msgs = mb.wait(t, 2)
	m = msgs[1]
	if strings.Join(m.to, ",") != "julie@example.org" || !strings.Contains(m.data, "refusée") ||
		!strings.Contains(m.data, "Pas un besoin professionnel") || !strings.Contains(m.data, "was denied") {
		t.Fatalf("decision mail to %v:\n%s", m.to, m.data)
	}
	// No address left: no mail.
	rc := e.submit(t, "10.0.0.2", "", why)
	mb.wait(t, 3)
	if _, err := e.reg.Get(context.Background(), rc); err != nil {
		t.Fatal(err)
	}
}

func TestCompose(t *testing.T) {
	b := compose("balise@x", Message{To: []string{"a@x"}, Subject: "Demande\r\nBcc: evil@x", Body: ".line\nnext"}, time.Unix(0, 0))
	if bytes.Contains(b, []byte("\r\nBcc:")) || !bytes.Contains(b, []byte("\r\n..line\r\n")) {
		t.Fatalf("compose = %q", b)
	}
	if emailAddress("poste 4321") != "" || emailAddress("Julie <j@x.org>") != "" || emailAddress("j@x.org") != "j@x.org" {
		t.Fatal("emailAddress")
	}
}
