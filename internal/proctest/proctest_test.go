package proctest_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/proctest"
)

func TestFreePortIsBindable(t *testing.T) {
	port := proctest.FreePort(t)
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatalf("listen on the free port %s: %v", port, err)
	}
	ln.Close()
}

func TestStartIsDoneWhenTheProcessExits(t *testing.T) {
	p := proctest.Start(t, "", nil, "sh", "-c", "echo out; echo err >&2")
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("sh -c echo not done within 10 s")
	}
	if err := p.Err(); err != nil {
		t.Errorf("Err() = %v, want nil", err)
	}
	if got := p.Output(); got != "out\nerr\n" {
		t.Errorf("Output() = %q, want stdout and stderr", got)
	}
}

func TestStartReportsTheExitStatus(t *testing.T) {
	p := proctest.Start(t, "", nil, "sh", "-c", "exit 3")
	<-p.Done()
	if p.Err() == nil {
		t.Error("Err() = nil for exit status 3")
	}
}

func TestWaitGetWaitsUntilReady(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls++ // the test's GETs are sequential
		if calls < 3 {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("up"))
	}))
	defer srv.Close()
	p := proctest.Start(t, "", nil, "sleep", "60") // stands for the server
	status, body := proctest.WaitGet(t, p, srv.Client(), srv.URL, func(status int) bool { return status < 500 })
	if status != http.StatusOK || body != "up" || calls != 3 {
		t.Errorf("WaitGet = %d %q after %d GETs, want 200 \"up\" after 3", status, body, calls)
	}
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name     string
		argv     []string
		stdout   string
		inStderr string
		code     int
	}{
		{name: "exit status and both streams", argv: []string{"sh", "-c", "cat; echo err >&2; exit 3"}, stdout: "in", inStderr: "err\n", code: 3},
		{name: "env added", argv: []string{"sh", "-c", `printf %s "$PROCTEST_X"`}, stdout: "x"},
		{name: "not found: why, in stderr", argv: []string{"proctest-no-such-command"}, inStderr: "proctest-no-such-command", code: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := proctest.Run("", []string{"PROCTEST_X=x"}, "in", tc.argv...)
			if stdout != tc.stdout || code != tc.code || !strings.Contains(stderr, tc.inStderr) {
				t.Errorf("Run = %q, %q, %d; want %q, stderr with %q, %d", stdout, stderr, code, tc.stdout, tc.inStderr, tc.code)
			}
		})
	}
}

func TestHaveToolsFindsInstalledOnes(t *testing.T) {
	if !proctest.HaveTools(t, "this test", "sh", "sleep") {
		t.Error("HaveTools(sh, sleep) = false")
	}
}

func TestAMissingToolSkips(t *testing.T) {
	t.Setenv(proctest.RequireRuntimes, "")
	var have bool
	t.Run("NeedTool", func(t *testing.T) {
		have = proctest.HaveTools(t, "this part", "proctest-no-such-tool")
		proctest.NeedTool(t, "proctest-no-such-tool")
		t.Error("NeedTool returned for a missing tool")
	})
	if have {
		t.Error("HaveTools(proctest-no-such-tool) = true")
	}
}
