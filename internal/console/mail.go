package console

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/mail"
	"net/smtp"
	"net/url"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
)

// MailerOptions configures a Mailer.
type MailerOptions struct {
	// URL is smtp://host:port (STARTTLS when offered; required beyond
	// loopback) or smtps://host:port. Required.
	URL string
	// From is the sender address. Empty: balise@ the host of the first
	// recipient's domain, else balise@localhost.
	From string
	// RootCAs verifies the server's certificate. Nil: the system's.
	RootCAs *x509.CertPool
	// Timeout bounds one delivery. Zero: 30 s.
	Timeout time.Duration
	// Logger receives failures. Nil: discarded.
	Logger *slog.Logger
}

// Message is one e-mail.
type Message struct {
	To      []string
	Subject string
	Body    string
}

// Mailer sends e-mail in the background: Send never blocks.
type Mailer struct {
	opt   MailerOptions
	u     *url.URL
	queue chan Message
}

// NewMailer checks opt and returns a Mailer; call Run to deliver.
func NewMailer(opt MailerOptions) (*Mailer, error) {
	u, err := url.Parse(opt.URL)
	if err != nil || (u.Scheme != "smtp" && u.Scheme != "smtps") || u.Host == "" {
		return nil, fmt.Errorf("invalid SMTP URL %q (smtp://host:port or smtps://host:port)", opt.URL)
	}
	if u.Port() == "" {
		if u.Scheme == "smtps" {
			u.Host += ":465"
		} else {
			u.Host += ":25"
		}
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 30 * time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	return &Mailer{opt: opt, u: u, queue: make(chan Message, 256)}, nil
}

// Send queues m (dropped, and logged, when the queue is full).
func (m *Mailer) Send(msg Message) {
	select {
	case m.queue <- msg:
	default:
		m.opt.Logger.Warn("console: e-mail dropped: queue full", "subject", msg.Subject)
	}
}

// Run delivers queued messages until ctx ends.
func (m *Mailer) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-m.queue:
			if err := m.Deliver(ctx, msg); err != nil {
				m.opt.Logger.Warn("console: e-mail not delivered", "subject", msg.Subject, "error", err)
			}
		}
	}
}

func (m *Mailer) from(to []string) string {
	if m.opt.From != "" {
		return m.opt.From
	}
	if len(to) > 0 {
		if i := strings.LastIndexByte(to[0], '@'); i >= 0 {
			return "balise@" + to[0][i+1:]
		}
	}
	return "balise@localhost"
}

// Deliver sends msg now.
func (m *Mailer) Deliver(ctx context.Context, msg Message) error {
	if len(msg.To) == 0 {
		return nil
	}
	for _, a := range msg.To {
		if p, err := mail.ParseAddress(a); err != nil || p.Address != a {
			return fmt.Errorf("invalid recipient %q", a)
		}
	}
	from := m.from(msg.To)
	ctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	defer cancel()
	host := m.u.Hostname()
	d := net.Dialer{}
	conn, err := d.DialContext(ctx, "tcp", m.u.Host)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	tcfg := &tls.Config{ServerName: host, RootCAs: m.opt.RootCAs, MinVersion: tls.VersionTLS12}
	if m.u.Scheme == "smtps" {
		tc := tls.Client(conn, tcfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return err
		}
		conn = tc
	}
	cl, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return err
	}
	defer cl.Close()
	if m.u.Scheme == "smtp" {
		if ok, _ := cl.Extension("STARTTLS"); ok {
			if err := cl.StartTLS(tcfg); err != nil {
				return err
			}
		} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return errors.New("the server offers no STARTTLS: refusing to send in clear text beyond loopback")
		}
	}
	if err := cl.Mail(from); err != nil {
		return err
	}
	for _, a := range msg.To {
		if err := cl.Rcpt(a); err != nil {
			return err
		}
	}
	w, err := cl.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(compose(from, msg, time.Now())); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return cl.Quit()
}

// compose writes the message: headers (the subject MIME-encoded, every
// header free of line breaks) and a UTF-8 text body.
func compose(from string, msg Message, now time.Time) []byte {
	clean := func(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\n", clean(from))
	fmt.Fprintf(&b, "To: %s\r\n", clean(strings.Join(msg.To, ", ")))
	fmt.Fprintf(&b, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", clean(msg.Subject)))
	fmt.Fprintf(&b, "Date: %s\r\n", now.Format(time.RFC1123Z))
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nAuto-Submitted: auto-generated\r\n\r\n")
	for _, line := range strings.Split(strings.ReplaceAll(msg.Body, "\r\n", "\n"), "\n") {
		if strings.HasPrefix(line, ".") {
			line = "." + line
		}
		b.WriteString(line + "\r\n")
	}
	return b.Bytes()
}

// emailAddress returns the contact as a bare e-mail address, or "".
func emailAddress(contact string) string {
	p, err := mail.ParseAddress(strings.TrimSpace(contact))
	if err != nil || p.Address != strings.TrimSpace(contact) || strings.ContainsAny(p.Address, "\r\n") {
		return ""
	}
	return p.Address
}

// notify is the register's OnChange: new requests to the officers,
// decisions to the requester when they left an e-mail address.
func (c *Console) notify(event string, q exceptions.Request) {
	m := c.opt.Mailer
	svc := make([]string, len(q.Services))
	for i, s := range q.Services {
		svc[i] = c.opt.ServiceName(s)
	}
	services := strings.Join(svc, ", ")
	at := func(t time.Time) string { return t.In(c.opt.Location).Format("2006-01-02 15:04") }
	link := ""
	if c.opt.BaseURL != "" {
		link = strings.TrimSuffix(c.opt.BaseURL, "/") + "/requests/" + q.ID
	}
	if event == exceptions.EventReceived {
		if len(c.opt.NotifyTo) == 0 {
			return
		}
		body := fmt.Sprintf("Nouvelle demande d'exception %s\nService : %s\nDurée demandée : %s\nPoste : %s\nReçue le %s\n",
			q.ID, services, durationLabel(q.Duration, "fr"), q.Client, at(q.Created))
		if link != "" {
			body += "Examiner : " + link + "\n"
		}
		body += fmt.Sprintf("\nNew exception request %s\nService: %s\nDuration asked: %s\nWorkstation: %s\nReceived on %s\n",
			q.ID, services, durationLabel(q.Duration, "en"), q.Client, at(q.Created))
		if link != "" {
			body += "Review: " + link + "\n"
		}
		m.Send(Message{To: c.opt.NotifyTo, Subject: "[Balise] Nouvelle demande " + q.ID + " / New request", Body: body})
		return
	}
	to := emailAddress(q.Contact)
	if to == "" {
		return
	}
	var fr, en, sfr, sen string
	switch event {
	case exceptions.EventApproved:
		sfr, sen = "acceptée", "approved"
		fr = fmt.Sprintf("Votre demande %s d'accès à %s a été acceptée. L'accès est ouvert jusqu'au %s.", q.ID, services, at(q.Grant.NotAfter))
		en = fmt.Sprintf("Your request %s for access to %s was approved. Access is open until %s.", q.ID, services, at(q.Grant.NotAfter))
	case exceptions.EventDenied:
		sfr, sen = "refusée", "denied"
		fr = fmt.Sprintf("Votre demande %s d'accès à %s a été refusée.\nMotif : %s", q.ID, services, q.Note)
		en = fmt.Sprintf("Your request %s for access to %s was denied.\nReason: %s", q.ID, services, q.Note)
	case exceptions.EventRevoked:
		sfr, sen = "révoquée", "revoked"
		fr = fmt.Sprintf("L'exception accordée pour votre demande %s (%s) a été révoquée.\nMotif : %s", q.ID, services, q.Note)
		en = fmt.Sprintf("The grant of your request %s (%s) was revoked.\nReason: %s", q.ID, services, q.Note)
	case exceptions.EventExtended:
		sfr, sen = "prolongée", "extended"
		fr = fmt.Sprintf("L'exception accordée pour votre demande %s (%s) a été prolongée jusqu'au %s.", q.ID, services, at(q.Grant.NotAfter))
		en = fmt.Sprintf("The grant of your request %s (%s) was extended until %s.", q.ID, services, at(q.Grant.NotAfter))
	default:
		return
	}
	body := fr + "\n\n" + en + "\n\n-- \nBalise, service de la sécurité de l'information / information-security service\n"
	if q.Lang == "en" {
		body = en + "\n\n" + fr + "\n\n-- \nBalise, information-security service / service de la sécurité de l'information\n"
	}
	m.Send(Message{To: []string{to}, Subject: "[Balise] Demande " + q.ID + " " + sfr + " / Request " + sen, Body: body})
}
