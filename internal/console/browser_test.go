package console

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// browser starts headless Chromium, or skips (fails with BALISE_E2E=1).
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if path, err = exec.LookPath("chromium-browser"); err != nil {
			if os.Getenv("BALISE_E2E") == "1" {
				t.Fatal("BALISE_E2E=1 but chromium is not installed")
			}
			t.Skip("chromium is not installed (set BALISE_E2E=1 to make this a failure)")
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path),
		chromedp.Flag("headless", true), chromedp.DisableGPU, chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(t.TempDir()))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(ctx, 50*time.Second)
	t.Cleanup(cancel3)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// artifacts is where screenshots go: $BALISE_ARTIFACTS or a temporary
// directory.
func artifacts(t *testing.T) string {
	dir := os.Getenv("BALISE_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func shot(t *testing.T, ctx context.Context, dir, name string, width int64) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, 900)); err != nil {
		t.Fatal(err)
	}
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%d bytes)", p, len(buf))
}

// run runs an action returning a value, failing t on error.
func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

func js[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	return run(t, ctx, chromedp.Evaluate[T](expr))
}

// TestBrowser drives the console in headless Chromium: sign in, approve
// with the mouse, approve with the keyboard alone, a <script>
// justification that stays inert, French and English at desktop and
// tablet widths, an auditor without decision forms, and an idle session
// sent back to the sign-in page.
func TestBrowser(t *testing.T) {
	ctx := browser(t)
	dir := artifacts(t)
	e := newEnv(t, nil)
	hostile := `<script>window.pwned=1;document.title="pwned"</script><img src=x onerror="window.pwned=2"> Besoin réel pour la page de l'établissement`
	first := e.submit(t, "10.0.0.11", "", hostile)
	second := e.submit(t, "10.0.0.12", "jtremblay", "Publication des offres d'emploi de la campagne d'automne")
	e.clock.Add(25 * time.Hour) // both overdue
	third := e.submit(t, "10.0.0.13", "", "Veille des commentaires sur la page de l'hôpital")
	id := func(s string) chromedp.ID { return chromedp.ID(s) }

	do(t, ctx,
		chromedp.Navigate(e.url+"/"),
		chromedp.WaitVisible(id("username")),
		chromedp.SendKeys(id("username"), "rsi"),
		chromedp.SendKeys(id("password"), officerPW),
		chromedp.Click(id("sign-in")),
		chromedp.WaitVisible(id("queue")),
	)
	text := run(t, ctx, chromedp.Text(id("queue")))
	lang := js[string](t, ctx, "document.documentElement.lang")
	if lang != "fr" || !strings.Contains(text, first) || !strings.Contains(text, third) || !strings.Contains(text, "En retard") {
		t.Fatalf("queue (lang %s):\n%s", lang, text)
	}
	shot(t, ctx, dir, "console-queue-fr-1280.png", 1280)

	// The hostile justification shows as text and runs nothing.
	do(t, ctx, chromedp.Navigate(e.url+"/requests/"+first), chromedp.WaitVisible(id("justification")))
	text = run(t, ctx, chromedp.Text(id("justification")))
	title := run(t, ctx, chromedp.Title())
	pwned := js[bool](t, ctx, `window.pwned !== undefined || document.querySelector("#justification img, #justification script") !== null`)
	if pwned || title == "pwned" || !strings.Contains(text, "<script>window.pwned=1") {
		t.Fatalf("justification: pwned=%v title=%q text=%q", pwned, title, text)
	}
	shot(t, ctx, dir, "console-request-fr-1280.png", 1280)
	shot(t, ctx, dir, "console-request-fr-820.png", 820)

	// Approve with the mouse.
	do(t, ctx, chromedp.EmulateViewport(1280, 900), chromedp.Click(id("approve")), chromedp.WaitVisible(id("done")))
	if status := run(t, ctx, chromedp.Text(id("status"))); status != "acceptée" {
		t.Fatalf("status after approve = %q", status)
	}

	// Approve with the keyboard alone: Tab to the button, Enter. The
	// focused element shows a visible outline.
	do(t, ctx, chromedp.Navigate(e.url+"/requests/"+second), chromedp.WaitVisible(id("approve")))
	var focused, outline string
	tabs := 0
	for tabs = 1; tabs <= 40; tabs++ {
		do(t, ctx, chromedp.KeyEvent(kb.Tab))
		focused = js[string](t, ctx, `document.activeElement.id`)
		outline = js[string](t, ctx, `getComputedStyle(document.activeElement).outlineStyle`)
		if focused == "approve" {
			break
		}
	}
	if focused != "approve" {
		t.Fatal("Tab never reached the approve button")
	}
	if outline == "none" || outline == "" {
		t.Errorf("the focused button has no visible outline (%q)", outline)
	}
	do(t, ctx, chromedp.KeyEvent(kb.Enter), chromedp.WaitVisible(id("done")))
	if status := run(t, ctx, chromedp.Text(id("status"))); status != "acceptée" {
		t.Fatalf("status after keyboard approve = %q", status)
	}
	t.Logf("keyboard approve: %d Tab presses", tabs)
	q, _ := e.reg.Get(context.Background(), second)
	if q.DecidedBy != "rsi" || q.Grant == nil {
		t.Fatalf("keyboard approve stored %+v", q)
	}

	// English, desktop and tablet; no horizontal scrolling at 820 px.
	do(t, ctx, chromedp.Navigate(e.url+"/requests/"+third+"?lang=en"), chromedp.WaitVisible(id("approve")))
	lang = js[string](t, ctx, "document.documentElement.lang")
	if text = run(t, ctx, chromedp.Text(id("approve"))); lang != "en" || text != "Approve" {
		t.Fatalf("English page: lang %q, button %q", lang, text)
	}
	shot(t, ctx, dir, "console-request-en-1280.png", 1280)
	shot(t, ctx, dir, "console-request-en-820.png", 820)
	do(t, ctx, chromedp.Navigate(e.url+"/"), chromedp.WaitVisible(chromedp.CSS("main")))
	shot(t, ctx, dir, "console-queue-en-820.png", 820)
	if js[bool](t, ctx, `document.documentElement.scrollWidth > window.innerWidth`) {
		t.Error("the queue scrolls sideways at 820 px")
	}
	do(t, ctx, chromedp.Navigate(e.url+"/report?lang=fr"), chromedp.WaitVisible(id("audit-status")))
	if text = run(t, ctx, chromedp.Text(id("audit-status"))); !strings.Contains(text, "chaîne intacte") {
		t.Fatalf("report audit status = %q", text)
	}
	shot(t, ctx, dir, "console-report-fr-1280.png", 1280)
	shot(t, ctx, dir, "console-report-fr-820.png", 820)

	// An idle session ends: the next page is the sign-in page.
	e.clock.Add(31 * time.Minute)
	do(t, ctx, chromedp.Navigate(e.url+"/requests/"+third), chromedp.WaitVisible(id("username")))
	if loc := run(t, ctx, chromedp.Location()); !strings.Contains(loc, "/login?next=") {
		t.Fatalf("after 31 idle minutes: %s", loc)
	}

	// An auditor sees no decision form.
	do(t, ctx,
		chromedp.SendKeys(id("username"), "verif"),
		chromedp.SendKeys(id("password"), auditorPW),
		chromedp.Click(id("sign-in")),
		chromedp.WaitVisible(id("read-only")),
	)
	if !js[bool](t, ctx, `document.querySelector("#approve-form") === null`) {
		t.Fatal("the auditor is offered the approve form")
	}
	fmt.Fprintln(os.Stderr, "screenshots in", dir)
}
