package console

import (
	"bytes"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
)

var pageNames = []string{"login", "error", "queue", "search", "request", "report"}

func (c *Console) parseTemplates() error {
	c.pages = map[string]*template.Template{}
	for _, name := range pageNames {
		t := template.New("layout.html").Funcs(template.FuncMap{
			"t": tr,
			"date": func(t time.Time) string {
				if t.IsZero() {
					return ""
				}
				return t.In(c.opt.Location).Format("2006-01-02 15:04")
			},
			"stamp": func(s string) string {
				t, err := time.Parse(time.RFC3339Nano, s)
				if err != nil {
					return s
				}
				return t.In(c.opt.Location).Format("2006-01-02 15:04")
			},
			"svc": c.opt.ServiceName,
			"services": func(ids []string) string {
				names := make([]string, len(ids))
				for i, id := range ids {
					names[i] = c.opt.ServiceName(id)
				}
				return strings.Join(names, ", ")
			},
			"dur":     func(d time.Duration, l string) string { return durationLabel(d, l) },
			"overdue": c.overdue,
		})
		var err error
		if c.pages[name], err = t.ParseFS(assets, "web/layout.html", "web/"+name+".html"); err != nil {
			return err
		}
	}
	return nil
}

// durationLabel writes 4h as "4 heures" / "4 hours".
func durationLabel(d time.Duration, l string) string {
	unit := func(n int64, fr, en string) string {
		w := fr
		if l == "en" {
			w = en
		}
		if n != 1 {
			w += "s"
		}
		return itoa(n) + " " + w
	}
	switch {
	case d > 0 && d%(24*time.Hour) == 0:
		return unit(int64(d/(24*time.Hour)), "jour", "day")
	case d > 0 && d%time.Hour == 0:
		return unit(int64(d/time.Hour), "heure", "hour")
	case d > 0 && d%time.Minute == 0:
		return unit(int64(d/time.Minute), "minute", "minute")
	}
	return d.String()
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

// render writes page name in language l.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name, l string, s *session, data map[string]any) {
	if data == nil {
		data = map[string]any{}
	}
	other := "en"
	if l == "en" {
		other = "fr"
	}
	q := r.URL.Query()
	q.Set("lang", other)
	data["L"] = l
	data["Switch"] = r.URL.Path + "?" + q.Encode()
	if s != nil {
		data["Me"] = map[string]string{"User": s.user, "Role": s.role, "CSRF": s.csrf}
	}
	data["Page"] = name
	var b bytes.Buffer
	if err := c.pages[name].Execute(&b, data); err != nil {
		c.log.Error("console: page failed", "page", name, "error", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

func (c *Console) queuePage(w http.ResponseWriter, r *http.Request, s session) {
	l := lang(w, r)
	reqs, err := c.reg.List(r.Context(), exceptions.StatusPending)
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "queue", l, &s, map[string]any{"Requests": reqs})
}

func (c *Console) searchPage(w http.ResponseWriter, r *http.Request, s session) {
	l := lang(w, r)
	q, err := c.parseQuery(r)
	if err != nil {
		c.refuse(w, r, http.StatusBadRequest, "bad_request", err.Error(), err.Error())
		return
	}
	reqs, err := c.search(r.Context(), q)
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	// Newest first: history is read backwards.
	for i, j := 0, len(reqs)-1; i < j; i, j = i+1, j-1 {
		reqs[i], reqs[j] = reqs[j], reqs[i]
	}
	statuses := []string{"pending", "approved", "denied", "revoked", "expired"}
	c.render(w, r, http.StatusOK, "search", l, &s, map[string]any{"Q": q, "Requests": reqs, "Statuses": statuses})
}

func (c *Console) requestPage(w http.ResponseWriter, r *http.Request, s session) {
	l := lang(w, r)
	q, err := c.reg.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	events, err := c.reg.History(r.Context(), q.ID)
	if err != nil {
		c.log.Warn("console: history unreadable", "id", q.ID, "error", err)
	}
	var durations []map[string]string
	for _, d := range c.reg.Durations() {
		durations = append(durations, map[string]string{"Value": exceptions.FormatDuration(d), "Label": durationLabel(d, l),
			"Selected": map[bool]string{true: "selected"}[d == q.Duration]})
	}
	own := sameUser(q.User, s.user)
	done := r.URL.Query().Get("done")
	if _, ok := messages["done_"+done]; !ok {
		done = ""
	}
	active := q.Status == exceptions.StatusApproved && q.Grant != nil && c.now().Before(q.Grant.NotAfter)
	c.render(w, r, http.StatusOK, "request", l, &s, map[string]any{
		"Q": q, "Events": events, "Durations": durations, "Own": own, "Done": done,
		"CanDecide": s.role == RoleOfficer && !own, "Active": active,
	})
}
