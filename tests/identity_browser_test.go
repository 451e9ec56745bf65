package tests

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// lockedBuffer is a bytes.Buffer safe for the browser's output and the
// test reading it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// idChromiumLocalState is the browser-wide preferences file ("Local
// State") given to Chromium's profile: what an institution sets by policy
// (AuthServerAllowlist, DisableAuthNegotiateCnameLookup) without writing
// a machine-wide policy file.
//
// The CNAME setting is required here: Chromium builds the proxy's
// Kerberos principal from the canonical name of the proxy's host, and
// --host-resolver-rules="MAP proxy.balise.test 127.0.0.1" makes that
// canonical name "127.0.0.1", so Chromium would ask the KDC for
// HTTP@127.0.0.1 ("Server not found in Kerberos database" in its net log)
// and answer the 407 with nothing. This Chromium has no command-line
// switch for it (--auth-negotiate-disable-cname-lookup and
// --disable-auth-negotiate-cname-lookup are ignored): only the policy or
// the auth.disable_negotiate_cname_lookup preference. The
// ERR_UNSUPPORTED_AUTH_SCHEME lines Chromium logs come from its own
// background requests (the system network context, which never
// negotiates), not from the page's.
const idChromiumLocalState = `{"auth": {"disable_negotiate_cname_lookup": true, "server_allowlist": %q}}`

// TestIdentityChromium: headless Chromium, with alice's Kerberos
// credentials (KRB5CCNAME, KRB5_CONFIG) and the proxy addressed by name,
// answers the proxy's 407 Negotiate by itself and reaches the listed
// page; a screenshot is saved (BALISE_ARTIFACTS or the test's directory).
func TestIdentityChromium(t *testing.T) {
	chrome := requireTool(t, "chromium")
	requireRoot(t) // the DC, and Chromium as root needs --no-sandbox
	d := idSetup(t)
	s := idStartSites(t)
	in := d.start(t, s, idOptions{})
	alice := d.login(t, "alice")
	_, port, _ := net.SplitHostPort(in.Addr("proxy"))
	dir := t.TempDir()
	netlog := filepath.Join(dir, "netlog.json")
	profile := filepath.Join(dir, "profile")
	if err := os.MkdirAll(profile, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(profile, "Local State"), []byte(fmt.Sprintf(idChromiumLocalState, d.proxy)), 0o600); err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.DisableGPU,
		chromedp.UserDataDir(profile),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.ProxyServer("http://" + d.proxy + ":" + port),
		chromedp.Flag("host-resolver-rules", "MAP "+d.proxy+" 127.0.0.1"),
		chromedp.Flag("auth-server-allowlist", d.proxy),
		chromedp.Flag("log-net-log", netlog),
		chromedp.Flag("net-log-capture-mode", "Everything"),
		chromedp.Flag("enable-logging", "stderr"),
		chromedp.Flag("vmodule", "*http_auth*=2,*gssapi*=2"),
		chromedp.Env(alice.Env()...),
		chromedp.CombinedOutput(&out),
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	page := "http://www.social.test:" + s.httpPort + "/"
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(page))
	var body string
	if err == nil {
		body, err = chromedp.Run(ctx, chromedp.Text("body"))
	}
	shot, serr := chromedp.Run(ctx, chromedp.FullScreenshot(90))
	if serr == nil {
		p := filepath.Join(idArtifactDir(t), "identity-chromium-alice.jpg")
		if werr := os.WriteFile(p, shot, 0o644); werr == nil {
			t.Logf("screenshot: %s", p)
		}
	}
	cancel()
	status := int64(0)
	if resp != nil {
		status = resp.Status
	}
	if err != nil || status != 200 || !strings.Contains(body, "hello from www.social.test") {
		nl, _ := os.ReadFile(netlog)
		t.Errorf("Chromium as alice, %s: status %d, err %v, body %.200q\nwant the origin's page\nchromium output:\n%s\nnetlog (auth events):\n%s",
			page, status, err, body, out.String(), idNetlogAuth(nl))
	}
}

// idNetlogAuth extracts the lines of a Chromium net log that speak of
// authentication, for the failure message.
func idNetlogAuth(nl []byte) string {
	var b strings.Builder
	for _, l := range strings.Split(string(nl), "\n") {
		ll := strings.ToLower(l)
		if strings.Contains(ll, "auth") || strings.Contains(ll, "gssapi") || strings.Contains(ll, "negotiate") {
			if len(l) > 600 {
				l = l[:600] + "…"
			}
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}
