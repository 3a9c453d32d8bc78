package supervisor

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// EnvReadyFD names the environment variable that gives a worker the file
// descriptor of its readiness pipe (3).
const EnvReadyFD = "SHOAL_READY_FD"

// NotifyReady tells the supervisor that this worker process serves: it
// writes "ready DETAIL" on the readiness pipe named by SHOAL_READY_FD,
// closes the pipe and removes the variable from the environment, so that
// a second call, or a process started afterwards, does not write on a
// descriptor that may by then be another file. Without the variable (the
// process was not started by a supervisor) it does nothing. detail, e.g.
// the worker's runner id, is optional and must fit on one line.
func NotifyReady(detail string) error {
	v := os.Getenv(EnvReadyFD)
	if v == "" {
		return nil
	}
	if strings.ContainsAny(detail, "\r\n") {
		return fmt.Errorf("supervisor: readiness detail %q spans lines", detail)
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("supervisor: %s=%q: not a file descriptor above stderr", EnvReadyFD, v)
	}
	os.Unsetenv(EnvReadyFD)
	line := "ready"
	if detail != "" {
		line += " " + detail
	}
	f := os.NewFile(uintptr(fd), "readiness pipe")
	_, err = f.WriteString(line + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("supervisor: report ready on fd %d: %w", fd, err)
	}
	return nil
}
