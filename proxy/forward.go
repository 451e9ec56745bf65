package proxy

import (
	"io"
	"net/http"
	"strings"
)

// forward carries one plain HTTP request (not an upgrade) to its origin
// and the answer back: the decision, then one round trip on the shared
// transport and a straight copy of the response. It does what goproxy's
// handler does for such requests without its per-request context,
// formatted log arguments and header copies.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request) {
	_, resp := p.onRequest(r, nil)
	defer func() {
		if resp != nil {
			resp.Body.Close()
		}
	}()
	finish := func(error) {}
	if resp == nil {
		r.RequestURI = ""
		h := r.Header
		h.Del("Proxy-Connection")
		h.Del("Proxy-Authenticate")
		h.Del("Proxy-Authorization")
		h.Del("Connection")
		var err error
		if p.fastPath(r) {
			var done func(bool)
			resp, done, err = p.roundTripOrigin(r)
			if err == nil {
				called := false
				finish = func(copyErr error) { called = true; done(copyErr == nil) }
				defer func() {
					if !called {
						done(false)
					}
				}()
			}
		} else {
			resp, err = p.tr.RoundTrip(r)
		}
		if err != nil {
			resp = p.dialErrorResponse(r, modeExplicit, err)
		}
	}
	wh := w.Header()
	for k, vs := range resp.Header {
		wh[k] = vs
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		wh.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	var dst io.Writer = w
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		dst = flushWriter{w}
	}
	_, err := io.Copy(dst, resp.Body)
	finish(err)
	if len(resp.Trailer) > 0 {
		http.NewResponseController(w).Flush()
		if len(resp.Trailer) == announced {
			for k, vs := range resp.Trailer {
				wh[k] = append(wh[k], vs...)
			}
		} else {
			for k, vs := range resp.Trailer {
				k = http.TrailerPrefix + k
				for _, v := range vs {
					wh.Add(k, v)
				}
			}
		}
	}
}

// flushWriter sends every write to the client at once (server-sent
// events).
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	http.NewResponseController(f.w).Flush()
	return n, err
}
