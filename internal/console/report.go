package console

import (
	"context"
	"encoding/csv"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
)

// count is one row of a report table.
type count struct {
	Key   string
	Label string
	N     int
}

// report is the committee's report over [From, To).
type report struct {
	From, To     string // YYYY-MM-DD, To inclusive
	Total        int
	ByService    []count
	ByMonth      []count
	ByDecision   []count
	Decided      int
	Median       time.Duration
	MedianText   string
	ActiveGrants int
	VerifiedAt   time.Time
	VerifyErr    string
}

// reportRange reads ?from=YYYY-MM-DD&to=YYYY-MM-DD or ?month=YYYY-MM;
// the default is the current month.
func (c *Console) reportRange(r *http.Request) (time.Time, time.Time, error) {
	v := r.URL.Query()
	now := c.now().In(c.opt.Location)
	if m := v.Get("month"); m != "" {
		t, err := time.ParseInLocation("2006-01", m, c.opt.Location)
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		return t, t.AddDate(0, 1, 0), nil
	}
	from := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, c.opt.Location)
	to := from.AddDate(0, 1, 0)
	var err error
	if s := v.Get("from"); s != "" {
		if from, err = c.parseDate(s, false); err != nil {
			return from, to, err
		}
	}
	if s := v.Get("to"); s != "" {
		if to, err = c.parseDate(s, true); err != nil {
			return from, to, err
		}
	}
	return from, to, nil
}

func (c *Console) buildReport(ctx context.Context, l string, from, to time.Time) (report, error) {
	all, err := c.reg.List(ctx, "")
	if err != nil {
		return report{}, err
	}
	rp := report{From: from.In(c.opt.Location).Format("2006-01-02"), To: to.Add(-time.Nanosecond).In(c.opt.Location).Format("2006-01-02")}
	svc, month, dec := map[string]int{}, map[string]int{}, map[string]int{}
	var waits []time.Duration
	now := c.now()
	for _, q := range all {
		if q.Grant != nil && q.Grant.Active(now) {
			rp.ActiveGrants++
		}
		if q.Created.Before(from) || !q.Created.Before(to) {
			continue
		}
		rp.Total++
		for _, s := range q.Services {
			svc[s]++
		}
		month[q.Created.In(c.opt.Location).Format("2006-01")]++
		dec[string(q.Status)]++
		if !q.Decided.IsZero() {
			waits = append(waits, q.Decided.Sub(q.Created))
		}
	}
	rows := func(m map[string]int, label func(string) string) []count {
		var out []count
		for k, n := range m {
			out = append(out, count{Key: k, Label: label(k), N: n})
		}
		sort.Slice(out, func(i, j int) bool {
			if out[i].N != out[j].N {
				return out[i].N > out[j].N
			}
			return out[i].Key < out[j].Key
		})
		return out
	}
	rp.ByService = rows(svc, c.opt.ServiceName)
	rp.ByMonth = rows(month, func(k string) string { return k })
	sort.Slice(rp.ByMonth, func(i, j int) bool { return rp.ByMonth[i].Key < rp.ByMonth[j].Key })
	rp.ByDecision = rows(dec, func(k string) string { return tr(l, "st_"+k) })
	rp.Decided = len(waits)
	if len(waits) > 0 {
		slices.Sort(waits)
		m := waits[len(waits)/2]
		if len(waits)%2 == 0 {
			m = (waits[len(waits)/2-1] + waits[len(waits)/2]) / 2
		}
		rp.Median = m
		rp.MedianText = waitText(m, l)
	}
	at, verr := c.verify(ctx, time.Minute)
	rp.VerifiedAt = at
	if verr != nil {
		rp.VerifyErr = verr.Error()
	}
	return rp, nil
}

// waitText writes a wait as "3 h 20 min" or "2 j 4 h".
func waitText(d time.Duration, l string) string {
	day := "j"
	if l == "en" {
		day = "d"
	}
	d = d.Round(time.Minute)
	days, hours, mins := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour), int(d%time.Hour/time.Minute)
	switch {
	case days > 0:
		return strconv.Itoa(days) + " " + day + " " + strconv.Itoa(hours) + " h"
	case hours > 0:
		return strconv.Itoa(hours) + " h " + strconv.Itoa(mins) + " min"
	}
	return strconv.Itoa(mins) + " min"
}

func (c *Console) reportPage(w http.ResponseWriter, r *http.Request, s session) {
	l := lang(w, r)
	from, to, err := c.reportRange(r)
	if err != nil {
		c.refuse(w, r, http.StatusBadRequest, "bad_request", "Période invalide (AAAA-MM-JJ).", "Invalid period (YYYY-MM-DD).")
		return
	}
	rp, err := c.buildReport(r.Context(), l, from, to)
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "report", l, &s, map[string]any{"R": rp, "CSV": "/report.csv?from=" + rp.From + "&to=" + rp.To})
}

// reportCSV writes the report as CSV rows: section, key, value.
func (c *Console) reportCSV(w http.ResponseWriter, r *http.Request, s session) {
	from, to, err := c.reportRange(r)
	if err != nil {
		c.refuse(w, r, http.StatusBadRequest, "bad_request", "Période invalide (AAAA-MM-JJ).", "Invalid period (YYYY-MM-DD).")
		return
	}
	rp, err := c.buildReport(r.Context(), "en", from, to)
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="balise-report-`+rp.From+`-`+rp.To+`.csv"`)
	cw := csv.NewWriter(w)
	cw.Write([]string{"section", "key", "value"})
	cw.Write([]string{"period", "from", rp.From})
	cw.Write([]string{"period", "to", rp.To})
	cw.Write([]string{"total", "requests", strconv.Itoa(rp.Total)})
	for _, x := range rp.ByService {
		cw.Write([]string{"service", csvSafe(x.Key), strconv.Itoa(x.N)})
	}
	for _, x := range rp.ByMonth {
		cw.Write([]string{"month", x.Key, strconv.Itoa(x.N)})
	}
	for _, x := range rp.ByDecision {
		cw.Write([]string{"decision", x.Key, strconv.Itoa(x.N)})
	}
	cw.Write([]string{"median_time_to_decision", "seconds", strconv.Itoa(int(rp.Median / time.Second))})
	cw.Write([]string{"active_grants", "now", strconv.Itoa(rp.ActiveGrants)})
	status := "ok"
	if rp.VerifyErr != "" {
		status = "broken: " + rp.VerifyErr
	}
	cw.Write([]string{"audit_chain", exceptions.RFC3339(rp.VerifiedAt), csvSafe(status)})
	cw.Flush()
}

// csvSafe keeps a cell from being read as a formula by spreadsheets.
func csvSafe(s string) string {
	if s != "" && (s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@') {
		return "'" + s
	}
	return s
}
