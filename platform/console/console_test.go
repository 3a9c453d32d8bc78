package console_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/shoal-dev/shoal/platform/console"
)

// files are the console's files and the type each is served with.
var files = []struct {
	path, file, contentType string
}{
	{"/ui/", "index.html", "text/html; charset=utf-8"},
	{"/ui/index.html", "index.html", "text/html; charset=utf-8"},
	{"/ui/app.js", "app.js", "text/javascript; charset=utf-8"},
	{"/ui/app.css", "app.css", "text/css; charset=utf-8"},
	{"/ui/favicon.svg", "favicon.svg", "image/svg+xml"},
}

func serve(t *testing.T, method, path string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, vs := range header {
		req.Header[k] = vs
	}
	w := httptest.NewRecorder()
	console.Handler().ServeHTTP(w, req)
	return w
}

// securityHeaders are on every answer of the console, errors included.
func checkSecurityHeaders(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	want := map[string]string{
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"X-Frame-Options":         "DENY",
	}
	for k, v := range want {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func TestServesEveryFile(t *testing.T) {
	for _, f := range files {
		t.Run(f.path, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join("static", f.file))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(want)
			etag := `"` + hex.EncodeToString(sum[:]) + `"`
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				w := serve(t, method, f.path, nil)
				if w.Code != http.StatusOK {
					t.Fatalf("%s %s = %d", method, f.path, w.Code)
				}
				checkSecurityHeaders(t, w)
				h := w.Header()
				if got := h.Get("Content-Type"); got != f.contentType {
					t.Errorf("%s: Content-Type = %q, want %q", method, got, f.contentType)
				}
				if got := h.Get("Cache-Control"); got != "no-cache" {
					t.Errorf("%s: Cache-Control = %q, want no-cache", method, got)
				}
				if got := h.Get("ETag"); got != etag {
					t.Errorf("%s: ETag = %q, want %q (strong, the SHA-256 of the content)", method, got, etag)
				}
				if got := h.Get("Content-Length"); got != strconv.Itoa(len(want)) {
					t.Errorf("%s: Content-Length = %q, want %d", method, got, len(want))
				}
				body := w.Body.String()
				if method == http.MethodHead {
					if body != "" {
						t.Errorf("HEAD answered a body of %d bytes", len(body))
					}
				} else if body != string(want) {
					t.Errorf("GET body differs from static/%s", f.file)
				}
			}
		})
	}
}

func TestNotModified(t *testing.T) {
	etag := serve(t, http.MethodGet, "/ui/app.js", nil).Header().Get("ETag")
	other := `"0000000000000000000000000000000000000000000000000000000000000000"`
	for _, tc := range []struct {
		name        string
		ifNoneMatch string
		want        int
	}{
		{"the same ETag", etag, http.StatusNotModified},
		{"the same ETag among others", other + ", " + etag, http.StatusNotModified},
		{"the weak form of the ETag (If-None-Match compares weakly)", "W/" + etag, http.StatusNotModified},
		{"any", "*", http.StatusNotModified},
		{"another ETag", other, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(t, http.MethodGet, "/ui/app.js", http.Header{"If-None-Match": {tc.ifNoneMatch}})
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d", w.Code, tc.want)
			}
			checkSecurityHeaders(t, w)
			if got := w.Header().Get("ETag"); got != etag {
				t.Errorf("ETag = %q, want %q", got, etag)
			}
			if tc.want == http.StatusNotModified && w.Body.Len() != 0 {
				t.Errorf("304 with a body of %d bytes", w.Body.Len())
			}
		})
	}
}

// errorCode decodes the platform's JSON error shape.
func errorCode(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Message == "" {
		t.Fatalf("body %q is not a JSON error: %v", w.Body, err)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	return body.Error.Code
}

func TestUnknownFileNotFound(t *testing.T) {
	for _, path := range []string{"/ui/nope.js", "/ui/static/app.js", "/ui/app.js/", "/ui//app.js", "/ui/../go.mod", "/ui", "/app.js"} {
		t.Run(path, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.URL.Path = path // as a router hands it over, uncleaned
			w := httptest.NewRecorder()
			console.Handler().ServeHTTP(w, req)
			if w.Code != http.StatusNotFound {
				t.Fatalf("status %d, want 404", w.Code)
			}
			if code := errorCode(t, w); code != "not_found" {
				t.Errorf("code %q, want not_found", code)
			}
			checkSecurityHeaders(t, w)
		})
	}
}

func TestOnlyGetAndHead(t *testing.T) {
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		t.Run(method, func(t *testing.T) {
			w := serve(t, method, "/ui/", nil)
			if w.Code != http.StatusMethodNotAllowed {
				t.Fatalf("status %d, want 405", w.Code)
			}
			if got := w.Header().Get("Allow"); got != "GET, HEAD" {
				t.Errorf("Allow = %q, want GET, HEAD", got)
			}
			if code := errorCode(t, w); code != "method_not_allowed" {
				t.Errorf("code %q, want method_not_allowed", code)
			}
		})
	}
}

// TestIndexHasNothingInline pins down what the CSP forbids anyway, so
// that a mistake shows up here rather than as a blank console: every
// script is a file of the console, and no element carries a handler or a
// style attribute or loads anything from elsewhere.
func TestIndexHasNothingInline(t *testing.T) {
	f, err := os.Open("static/index.html")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := html.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	scripts := 0
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			attrs := map[string]string{}
			for _, a := range n.Attr {
				attrs[a.Key] = a.Val
				switch {
				case strings.HasPrefix(a.Key, "on"):
					t.Errorf("<%s %s=...>: an inline event handler", n.Data, a.Key)
				case a.Key == "style":
					t.Errorf("<%s style=%q>: an inline style", n.Data, a.Val)
				case a.Key == "src" || a.Key == "href" || a.Key == "action" || a.Key == "formaction":
					if regexp.MustCompile(`(?i)^\s*([a-z][a-z0-9+.-]*:|//)`).MatchString(a.Val) {
						t.Errorf("<%s %s=%q>: not a file of the console", n.Data, a.Key, a.Val)
					}
				}
			}
			switch n.Data {
			case "script":
				scripts++
				if attrs["src"] == "" {
					t.Error("an inline <script>")
				}
				if n.FirstChild != nil && strings.TrimSpace(n.FirstChild.Data) != "" {
					t.Errorf("<script src=%q> has content", attrs["src"])
				}
			case "style":
				t.Error("an inline <style>")
			}
		}
		for c := range n.ChildNodes() {
			walk(c)
		}
	}
	walk(doc)
	if scripts == 0 {
		t.Error("index.html loads no script")
	}
}

// TestScriptWritesNoHTML: the console renders every value as text; none
// of these ever parses a string as markup or code. It creates no Trusted
// Types policy either, so the policy's require-trusted-types-for keeps
// every such sink closed.
func TestScriptWritesNoHTML(t *testing.T) {
	err := fs.WalkDir(os.DirFS("static"), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(name, ".js") {
			return err
		}
		b, err := os.ReadFile(filepath.Join("static", name))
		if err != nil {
			return err
		}
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "localStorage", "document.cookie",
			"createContextualFragment", "DOMParser", "srcdoc", "setHTMLUnsafe", "parseHTMLUnsafe", "trustedTypes"} {
			if strings.Contains(string(b), bad) {
				t.Errorf("%s uses %s", name, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSmall keeps the console within its budget: it is loaded whole by
// every visit.
func TestSmall(t *testing.T) {
	const budget = 60 << 10
	entries, err := os.ReadDir("static")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		total += int(info.Size())
	}
	if total > budget {
		t.Errorf("the console's files total %d bytes, over the budget of %d", total, budget)
	}
}

// TestPolicyConstant: the exported policy is the one served.
func TestPolicyConstant(t *testing.T) {
	if got := serve(t, http.MethodGet, "/ui/", nil).Header().Get("Content-Security-Policy"); got != console.ContentSecurityPolicy {
		t.Errorf("served %q, exported %q", got, console.ContentSecurityPolicy)
	}
}
