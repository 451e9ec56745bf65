package exceptions

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// NotifierOptions configures a Notifier.
type NotifierOptions struct {
	// URL receives a POST with a JSON summary of each new request. Required.
	URL string
	// Format is the body's shape: "json" (default: Summary), "slack" (an
	// incoming webhook's {"text": ...}) or "teams" (a message with an
	// Adaptive Card, for Teams workflows and incoming webhooks).
	Format string
	// Timeout bounds one attempt. Zero: 5 s.
	Timeout time.Duration
	// Attempts is the number of tries per request. Zero: 3.
	Attempts int
	// Backoff is the wait before the second try, doubled after. Zero: 1 s.
	Backoff time.Duration
	// Client sends the requests. Nil: a client without proxy settings.
	Client *http.Client
	// Logger receives failures. Nil: discarded.
	Logger *slog.Logger
	// Metrics counts failures. Nil: not counted.
	Metrics *Metrics
}

// Notifier posts new-request summaries to a webhook, in the background:
// Enqueue never blocks, so the employee's answer is never delayed.
type Notifier struct {
	opt   NotifierOptions
	queue chan Request
}

// NewNotifier returns a Notifier; call Run to deliver.
func NewNotifier(opt NotifierOptions) *Notifier {
	if opt.Timeout <= 0 {
		opt.Timeout = 5 * time.Second
	}
	if opt.Attempts <= 0 {
		opt.Attempts = 3
	}
	if opt.Backoff <= 0 {
		opt.Backoff = time.Second
	}
	if opt.Client == nil {
		opt.Client = &http.Client{Transport: &http.Transport{Proxy: nil}}
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	return &Notifier{opt: opt, queue: make(chan Request, 256)}
}

// SetMetrics makes the notifier count its failures on m (call before Run).
func (n *Notifier) SetMetrics(m *Metrics) { n.opt.Metrics = m }

// Enqueue schedules a notification; when the queue is full it is dropped
// and counted.
func (n *Notifier) Enqueue(r Request) {
	select {
	case n.queue <- r:
	default:
		n.failed(r, fmt.Errorf("queue full"))
	}
}

// Summary is the JSON body of a notification. Personal fields typed by
// the requester are left out: the officer reads them with `show`.
type Summary struct {
	Event     string   `json:"event"`
	ID        string   `json:"id"`
	CreatedAt string   `json:"created_at"`
	Client    string   `json:"client"`
	User      string   `json:"user"`
	Services  []string `json:"services"`
	Host      string   `json:"host"`
	Duration  string   `json:"duration"`
	Text      string   `json:"text"`
}

// Run delivers notifications until ctx is done.
func (n *Notifier) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-n.queue:
			n.deliver(ctx, r)
		}
	}
}

func (n *Notifier) deliver(ctx context.Context, r Request) {
	body := NotificationBody(n.opt.Format, r)
	wait := n.opt.Backoff
	var err error
	for i := 0; i < n.opt.Attempts; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait *= 2
		}
		if err = n.post(ctx, body); err == nil {
			return
		}
	}
	n.failed(r, err)
}

func (n *Notifier) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.opt.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.opt.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "balise")
	resp, err := n.opt.Client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func (n *Notifier) failed(r Request, err error) {
	if n.opt.Metrics != nil {
		n.opt.Metrics.notifyErrors.Inc()
	}
	n.opt.Logger.Warn("exception notification failed", "id", r.ID, "err", err)
}

// NotificationBody is the webhook body announcing new request r in format
// "json" (or ""), "slack" or "teams". Personal fields typed by the
// requester (name, contact, justification) are never included.
func NotificationBody(format string, r Request) []byte {
	text := fmt.Sprintf("Balise: nouvelle demande d'exception %s (%s, %s) / new exception request; `balise exceptions show %s`",
		r.ID, strings.Join(r.Services, ", "), formatDuration(r.Duration), r.ID)
	var v any
	switch format {
	case "slack":
		v = map[string]any{"text": text}
	case "teams":
		facts := []map[string]string{
			{"title": "Demande / Request", "value": r.ID},
			{"title": "Service", "value": strings.Join(r.Services, ", ")},
			{"title": "Durée / Duration", "value": formatDuration(r.Duration)},
			{"title": "Poste / Workstation", "value": r.Client.String()},
		}
		v = map[string]any{
			"type": "message",
			"attachments": []any{map[string]any{
				"contentType": "application/vnd.microsoft.card.adaptive",
				"content": map[string]any{
					"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
					"type":    "AdaptiveCard",
					"version": "1.4",
					"body": []any{
						map[string]any{"type": "TextBlock", "text": "Balise: nouvelle demande d'exception / new exception request", "weight": "bolder", "wrap": true},
						map[string]any{"type": "FactSet", "facts": facts},
					},
				},
			}},
		}
	default:
		v = Summary{
			Event: EventReceived, ID: r.ID, CreatedAt: formatTime(r.Created), Client: r.Client.String(),
			User: r.User, Services: r.Services, Host: r.Host, Duration: formatDuration(r.Duration),
			Text: fmt.Sprintf("Balise: nouvelle demande d'exception %s (%v, %s) / new exception request; `balise exceptions show %s`",
				r.ID, r.Services, formatDuration(r.Duration), r.ID),
		}
	}
	body, _ := json.Marshal(v)
	return body
}
