package supervisor

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestBackoffDoublesUpToMax(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
	for _, tc := range []struct {
		exits int
		want  time.Duration
	}{
		{0, 100 * time.Millisecond},
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second},
		{1000, time.Second},
	} {
		if got := b.delay(tc.exits); got != tc.want {
			t.Errorf("after %d exits in a row: back-off %v, want %v", tc.exits, got, tc.want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	cmd := func(int) *exec.Cmd { return exec.Command("true") }
	c := Config{Workers: 1, Command: cmd}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.Ready != 30*time.Second || c.Drain != 30*time.Second ||
		c.Backoff != (Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Stable: 10 * time.Second}) ||
		c.CrashLoop != (CrashLoop{Exits: 5, Window: time.Minute}) {
		t.Errorf("defaults: Ready %v, Drain %v, %+v, %+v", c.Ready, c.Drain, c.Backoff, c.CrashLoop)
	}
	c = Config{Workers: 1, Command: cmd, Backoff: Backoff{Initial: time.Minute}}
	if err := c.setDefaults(); err != nil || c.Backoff.Max != time.Minute {
		t.Errorf("Initial above the default Max: Max = %v, %v; want Initial", c.Backoff.Max, err)
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	cmd := func(int) *exec.Cmd { return exec.Command("true") }
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no workers", Config{Command: cmd}, "0 workers: want at least 1"},
		{"negative drain", Config{Workers: 1, Command: cmd, Drain: -time.Second}, "Drain is negative"},
		{"negative crash-loop exits", Config{Workers: 1, Command: cmd, CrashLoop: CrashLoop{Exits: -1}}, "CrashLoop.Exits is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Start(context.Background(), tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start = %v, want an error saying %q", err, tc.want)
			}
		})
	}
	t.Run("no command", func(t *testing.T) {
		defer func() {
			if r := recover(); r == nil || !strings.HasPrefix(r.(string), "supervisor: ") {
				t.Errorf("panic %v, want a supervisor: message", r)
			}
		}()
		_, _ = Start(context.Background(), Config{Workers: 1})
	})
}

func TestReadReady(t *testing.T) {
	for _, tc := range []struct {
		line, want, wantErr string
	}{
		{line: "ready id-1\n", want: "id-1"},
		{line: "ready\n", want: ""},
		{line: "ready a b\r\n", want: "a b"},
		{line: "ready id-1", want: "id-1"}, // then closed
		{line: "", wantErr: "before reporting ready"},
		{line: "readyset\n", wantErr: `"readyset" does not start with "ready"`},
		{line: "listening\n", wantErr: `"listening" does not start with "ready"`},
		{line: "ready " + strings.Repeat("x", 5000), wantErr: "longer than 4096 bytes"},
	} {
		got, err := readReady(bufio.NewReaderSize(strings.NewReader(tc.line), maxReadyLine))
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("readReady(%.20q) = %q, %v; want an error saying %q", tc.line, got, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || got != tc.want):
			t.Errorf("readReady(%.20q) = %q, %v; want %q", tc.line, got, err, tc.want)
		}
	}
}
