// Package console is Shoal's web console: a few static files, embedded in
// the binary, that the gateway serves at /ui/. The page talks to the
// gateway's own API (the /system/ routes, /function/, /async-function/,
// /calls/) with the user's bearer token, which it keeps in the page's
// session storage only; it needs no build step, no CDN and no network
// beyond the gateway.
//
// # Routes
//
// [Handler] answers GET and HEAD of
//
//	/ui/             index.html
//	/ui/app.js       the application
//	/ui/app.css      its style sheet
//	/ui/favicon.svg  its icon
//
// and 404 not_found for any other path, 405 method_not_allowed for any
// other method, both in the platform's JSON error shape. The gateway
// mounts it at /ui/ and redirects / and /ui there.
//
// # Headers
//
// Every answer carries [ContentSecurityPolicy], which lets the page load
// scripts, styles and images from the gateway only, run no inline script
// or style and hand no string to an HTML or script sink, plus nosniff, no
// referrer and no framing. Files are
// revalidated on every load (Cache-Control: no-cache) against a strong
// ETag, the SHA-256 of their content, so a new binary's console is picked
// up at once and an unchanged one costs a 304.
package console

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/shoal-dev/shoal/invocation"
)

// Prefix is the path the console is served under.
const Prefix = "/ui/"

// ContentSecurityPolicy is the Content-Security-Policy of every answer of
// the console: nothing inline, nothing from elsewhere, no forms posted,
// no framing, and (Trusted Types) every DOM sink that parses a string as
// HTML or script, such as innerHTML, throws instead.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'"

//go:embed static
var static embed.FS

// asset is one embedded file, ready to serve.
type asset struct {
	body        []byte
	contentType string
	etag        string // quoted, strong
}

// contentTypes are the types of the console's files; mime's table would
// depend on the host's /etc/mime.types for some.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// assets maps a file name (without Prefix) to its asset; "" is index.html.
var assets = load(static)

func load(fsys fs.FS) map[string]asset {
	sub, err := fs.Sub(fsys, "static")
	if err != nil {
		panic("console: " + err.Error())
	}
	out := map[string]asset{}
	err = fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(sub, name)
		if err != nil {
			return err
		}
		ct, ok := contentTypes[path.Ext(name)]
		if !ok {
			ct = mime.TypeByExtension(path.Ext(name))
		}
		if ct == "" {
			panic("console: no content type for static/" + name)
		}
		sum := sha256.Sum256(body)
		out[name] = asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:]) + `"`}
		return nil
	})
	if err != nil {
		panic("console: " + err.Error())
	}
	index, ok := out["index.html"]
	if !ok {
		panic("console: static/index.html is missing")
	}
	out[""] = index
	return out
}

// Handler returns the handler of the console's files. It answers requests
// whose path is Prefix or Prefix followed by a file name, wherever it is
// mounted.
func Handler() http.Handler {
	return http.HandlerFunc(serve)
}

func serve(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")

	name, ok := strings.CutPrefix(r.URL.Path, Prefix)
	a, found := assets[name]
	if !ok || !found {
		invocation.Errorf(http.StatusNotFound, invocation.CodeNotFound,
			"no console file at %s; the console is at %s", r.URL.Path, Prefix).WriteHTTP(w)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		invocation.Errorf(http.StatusMethodNotAllowed, invocation.CodeMethodNotAllowed,
			"the console answers GET and HEAD, not %s", r.Method).WriteHTTP(w)
		return
	}
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	if matches(r.Header.Values("If-None-Match"), a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", a.contentType)
	h.Set("Content-Length", strconv.Itoa(len(a.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(a.body) // the client went away; nothing to do
	}
}

// matches reports whether an If-None-Match header names etag, by the weak
// comparison RFC 9110 prescribes for it, or is "*".
func matches(headers []string, etag string) bool {
	for _, h := range headers {
		for tag := range strings.SplitSeq(h, ",") {
			tag = strings.TrimPrefix(strings.TrimSpace(tag), "W/")
			if tag == "*" || tag == etag {
				return true
			}
		}
	}
	return false
}
