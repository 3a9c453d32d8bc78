package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// shoal up in either log format: one invocation's DEBUG lines, the
// gateway's and the worker's (re-emitted by up, marked with the worker),
// share its request id and trace id, and the worker's parent is the
// gateway's span, which the answer's traceresponse names.
func TestUpLogsRequestIDs(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			p := startShoal(t, "--log-format", format, "--log-level", "debug", "up", "-f", repoManifest(t),
				"--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", t.TempDir(), "--workers", "1", "--nats-context", "")
			listening := `msg="gateway listening" url=(\S+)`
			if format == "json" {
				listening = `"msg":"gateway listening","url":"([^"]+)"`
			}
			gw := p.waitLog(listening)[1]

			id := "up-" + format
			req, err := http.NewRequest("GET", gw+"/function/ping", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Request-Id", id)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			m := regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-02$`).FindStringSubmatch(resp.Header.Get("Traceresponse"))
			if resp.StatusCode != 200 || resp.Header.Get("X-Request-Id") != id || m == nil {
				t.Fatalf("GET /function/ping = %d, X-Request-Id %q, Traceresponse %q", resp.StatusCode, resp.Header.Get("X-Request-Id"), resp.Header.Get("Traceresponse"))
			}
			trace, span := m[1], m[2]

			want := []map[string]string{
				{"component": "gateway", "function": "ping", "status": "200", "request_id": id, "trace_id": trace, "span_id": span},
				{"worker": "1", "component": "runner", "function": "ping", "status": "200", "request_id": id, "trace_id": trace, "parent_id": span},
			}
			for _, w := range want {
				waitLine(t, p, format, "invocation", w)
			}
		})
	}
}

// waitLine waits up to 10 s for a line of p's log, in format, with msg
// and the attributes in want.
func waitLine(t *testing.T, p *proc, format, msg string, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, line := range strings.Split(p.output(), "\n") {
			attrs := parseLine(format, line)
			if attrs == nil || attrs["msg"] != msg {
				continue
			}
			match := true
			for k, v := range want {
				match = match && attrs[k] == v
			}
			if match {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s log line %q with %v", format, msg, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// textAttr is one key=value of a text log line (the values compared here
// need no quotes).
var textAttr = regexp.MustCompile(`(\w+)=(\S+)`)

// parseLine reads a log line's attributes as text, or nil when it is not
// a line of format.
func parseLine(format, line string) map[string]string {
	attrs := map[string]string{}
	if format == "json" {
		d := json.NewDecoder(strings.NewReader(line))
		d.UseNumber() // 200 stays "200"
		var raw map[string]any
		if d.Decode(&raw) != nil {
			return nil
		}
		for k, v := range raw {
			attrs[k] = fmt.Sprint(v)
		}
		return attrs
	}
	for _, m := range textAttr.FindAllStringSubmatch(line, -1) {
		if _, seen := attrs[m[1]]; !seen { // up's worker= mark comes first
			attrs[m[1]] = m[2]
		}
	}
	return attrs
}
