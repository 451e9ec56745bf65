package exceptions

import "time"

// RequestJSON is the JSON form of a request: the contract of `balise
// exceptions list --json` and `show --json` (id, status, client, user,
// services, justification, created_at...), and the objects of the
// officer console's API, which adds to it. Times are RFC 3339 in UTC, ""
// when unset; durations as FormatDuration writes them.
type RequestJSON struct {
	ID            string     `json:"id"`
	Status        string     `json:"status"`
	CreatedAt     string     `json:"created_at"`
	Client        string     `json:"client"`
	User          string     `json:"user"`
	Name          string     `json:"name"`
	Contact       string     `json:"contact"`
	Services      []string   `json:"services"`
	Host          string     `json:"host"`
	Justification string     `json:"justification"`
	Duration      string     `json:"duration"`
	DecidedBy     string     `json:"decided_by"`
	DecidedAt     string     `json:"decided_at"`
	Note          string     `json:"note"`
	Grant         *GrantJSON `json:"grant"`
}

// GrantJSON is the JSON form of a grant: Subject is the workstation's
// address or prefix ("" for a grant to a person), User the person ("" for
// a workstation).
type GrantJSON struct {
	Subject   string   `json:"subject"`
	User      string   `json:"user"`
	Services  []string `json:"services"`
	NotBefore string   `json:"not_before"`
	NotAfter  string   `json:"not_after"`
	GrantedBy string   `json:"granted_by"`
	RevokedAt string   `json:"revoked_at"`
	RevokedBy string   `json:"revoked_by"`
}

// JSON returns q's JSON form.
func (q Request) JSON() RequestJSON {
	out := RequestJSON{
		ID: q.ID, Status: string(q.Status), CreatedAt: RFC3339(q.Created), Client: q.Client.String(), User: q.User,
		Name: q.Name, Contact: q.Contact, Services: q.Services, Host: q.Host, Justification: q.Justification,
		Duration: FormatDuration(q.Duration), DecidedBy: q.DecidedBy, DecidedAt: RFC3339(q.Decided), Note: q.Note,
	}
	if out.Services == nil {
		out.Services = []string{}
	}
	if g := q.Grant; g != nil {
		out.Grant = &GrantJSON{User: g.User, Services: g.Services, NotBefore: RFC3339(g.NotBefore),
			NotAfter: RFC3339(g.NotAfter), GrantedBy: g.GrantedBy, RevokedAt: RFC3339(g.Revoked), RevokedBy: g.RevokedBy}
		if g.Subject.IsValid() {
			out.Grant.Subject = g.Subject.String()
		}
	}
	return out
}

// RFC3339 writes t in UTC, "" for the zero time.
func RFC3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// FormatDuration writes whole days as "7d" and other durations as Go
// does without trailing zero units ("4h", "1h30m").
func FormatDuration(d time.Duration) string { return formatDuration(d) }
