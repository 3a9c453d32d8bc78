// Package echo is the built-in echo function: it answers with a JSON
// description of the request it received, to show what a function sees of
// an invocation (method, path, query, headers, body).
package echo

import (
	"encoding/json"
	"io"
	"net/http"
	"unicode/utf8"
)

// Request is the JSON document echo answers with.
type Request struct {
	Method string              `json:"method"`
	Path   string              `json:"path"`
	Query  map[string][]string `json:"query"`
	Header map[string][]string `json:"header"`
	// Body is the request body when it is valid UTF-8; otherwise
	// BodyBase64 is set (encoding/json encodes []byte as base64).
	Body       string `json:"body,omitempty"`
	BodyBase64 []byte `json:"body_base64,omitempty"`
	BodyBytes  int    `json:"body_bytes"`
}

// Handler answers with the request it received as a [Request] document.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "echo: read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		doc := Request{
			Method:    r.Method,
			Path:      r.URL.Path,
			Query:     r.URL.Query(),
			Header:    r.Header,
			BodyBytes: len(body),
		}
		if utf8.Valid(body) {
			doc.Body = string(body)
		} else {
			doc.BodyBase64 = body
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(doc) // the write error is the caller's to see
	})
}
