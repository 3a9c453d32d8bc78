package manifest

import (
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults and bounds of the settings of functions that run as processes
// (http and exec handlers).
const (
	// DefaultStartTimeout bounds the wait for an http function's process
	// to be ready.
	DefaultStartTimeout = 30 * time.Second
	MaxStartTimeout     = 10 * time.Minute
	// MinMemory is the smallest memory limit: below it no runtime starts.
	MinMemory = 4 << 20
	// MaxCPU is the most cores a limit may name.
	MaxCPU = 1024
	// MinOpenFiles and MaxOpenFiles bound the open_files limit.
	MinOpenFiles = 16
	MaxOpenFiles = 1 << 20
	// MaxCommandArgs bounds a command's argument list.
	MaxCommandArgs = 256
	// MaxEnv bounds the variables of env and secrets together.
	MaxEnv = 256
)

// Listen kinds of an http handler: where the function's server listens.
const (
	// ListenPort passes a free loopback TCP port in PORT.
	ListenPort = "port"
	// ListenUnix passes a unix socket path in SHOAL_SOCKET.
	ListenUnix = "unix"
)

// HTTPHandler runs the function's own long-lived web server and forwards
// each invocation to it as an HTTP request.
type HTTPHandler struct {
	// Command is the server's argv, run in the function's working
	// directory.
	Command []string
	// Listen is ListenPort or ListenUnix.
	Listen string
	// Readiness is a path the server answers once it is ready; empty
	// means ready once it accepts connections.
	Readiness string
	// PerSlot runs one process per concurrency slot, each taking one
	// invocation at a time; otherwise one process takes them all.
	PerSlot bool
	// StartTimeout bounds the wait for readiness.
	StartTimeout time.Duration
}

// ExecHandler runs a command per invocation: the request body on its
// stdin, the answer from its stdout.
type ExecHandler struct {
	Command []string
}

// CodeRef names a function's code: the digest of its bundle in the code
// store (platform/bundle), set by `shoal deploy` once it has uploaded it.
type CodeRef struct {
	// Digest is "sha256:" and 64 hex digits.
	Digest string
	// Size is the bundle's size in bytes.
	Size int64
}

// Limits bound a function's processes, where the OS allows.
type Limits struct {
	// Memory in bytes; 0 means none.
	Memory int64
	// CPU in cores; 0 means none.
	CPU float64
	// OpenFiles is the most open file descriptors; 0 means the runner's.
	OpenFiles uint64
}

// Process is the part of a function's definition that only functions
// run as processes (http and exec handlers) have.
type Process struct {
	// Source is the directory holding the function's code, absolute (in
	// fn.yaml, relative to the file). It is what `shoal deploy` uploads;
	// a definition read from the catalog has none, only Code.
	Source string
	// Build is a command `shoal deploy` runs in Source before uploading
	// it (e.g. npm ci, go build); nil means none.
	Build []string
	// Code is the uploaded bundle; zero until `shoal deploy` sets it.
	Code CodeRef
	// Env is the function's environment.
	Env map[string]string
	// Secrets maps environment variables to secret names; the runner
	// reads their values from the secret store as it starts the function.
	Secrets map[string]string
	// Workdir is the working directory, relative to the code's root;
	// empty means the root.
	Workdir string
	Limits  Limits
}

// same reports whether two process settings define the same function.
// Source and Build, deploy-time settings, are not part of the definition.
func (p Process) same(q Process) bool {
	return p.Code == q.Code && maps.Equal(p.Env, q.Env) && maps.Equal(p.Secrets, q.Secrets) &&
		p.Workdir == q.Workdir && p.Limits == q.Limits
}

// same reports whether two handlers run the same thing alike.
func (h Handler) same(o Handler) bool {
	switch {
	case h.Builtin != o.Builtin, (h.HTTP == nil) != (o.HTTP == nil), (h.Exec == nil) != (o.Exec == nil):
		return false
	case h.HTTP != nil:
		a, b := *h.HTTP, *o.HTTP
		return slices.Equal(a.Command, b.Command) && a.Listen == b.Listen && a.Readiness == b.Readiness &&
			a.PerSlot == b.PerSlot && a.StartTimeout == b.StartTimeout
	case h.Exec != nil:
		return slices.Equal(h.Exec.Command, o.Exec.Command)
	}
	return true
}

// RunsProcess reports whether the handler runs the function's own code as
// processes, which needs its code uploaded.
func (h Handler) RunsProcess() bool { return h.HTTP != nil || h.Exec != nil }

// Command is the argv of a process handler; nil for a built-in.
func (h Handler) Command() []string {
	switch {
	case h.HTTP != nil:
		return h.HTTP.Command
	case h.Exec != nil:
		return h.Exec.Command
	}
	return nil
}

var (
	// digestRE is a bundle digest.
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	// envNameRE is an environment variable name a function may set.
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	// secretNameRE is a secret's name: a NATS KV key of the secret store.
	secretNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_.-]{0,126}[a-z0-9])?$`)
)

// ValidDigest reports whether s is a bundle digest: "sha256:" and 64
// lowercase hex digits.
func ValidDigest(s string) bool { return digestRE.MatchString(s) }

// ValidSecretName reports whether s may name a secret: 1 to 128
// lowercase letters, digits and . _ -, starting and ending with a letter
// or digit.
func ValidSecretName(s string) bool { return secretNameRE.MatchString(s) }

// envNameProblem says why a function may not set an environment variable
// of that name, or "".
func envNameProblem(name string) string {
	switch {
	case !envNameRE.MatchString(name):
		return fmt.Sprintf("invalid environment variable name %q: use letters, digits and _, not starting with a digit", name)
	case name == "PORT", strings.HasPrefix(strings.ToUpper(name), "SHOAL_"):
		return fmt.Sprintf("%q is set by Shoal (PORT and SHOAL_*); choose another name", name)
	}
	return ""
}

// workdirProblem says why a working directory is not acceptable, or "".
func workdirProblem(dir string) string {
	if filepath.IsAbs(dir) || dir == ".." || strings.HasPrefix(filepath.Clean(dir), "../") || strings.ContainsRune(dir, 0) {
		return fmt.Sprintf("workdir %q must be a relative path inside the source directory", dir)
	}
	return ""
}

// ParseMemory reads a memory size: a number of bytes, or a number with
// a suffix, binary (Ki, Mi, Gi, Ti) or decimal (k, K, M, G, T), as
// Kubernetes writes them.
func ParseMemory(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}}
	num, mult := s, int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("invalid memory size %q: use bytes or a number with Ki, Mi, Gi (or k, M, G), like 256Mi", s)
	}
	return n * mult, nil
}

// FormatMemory writes a memory size as ParseMemory reads it, in the
// largest binary unit that divides it.
func FormatMemory(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// limitsProblems checks limits against their bounds.
func limitsProblems(l Limits) []string {
	var out []string
	if l.Memory != 0 && l.Memory < MinMemory {
		out = append(out, fmt.Sprintf("memory %s is below the minimum of %s", FormatMemory(l.Memory), FormatMemory(MinMemory)))
	}
	if l.CPU < 0 || l.CPU > MaxCPU {
		out = append(out, fmt.Sprintf("cpu %g is out of range; expected more than 0 and at most %d cores", l.CPU, MaxCPU))
	}
	if l.OpenFiles != 0 && (l.OpenFiles < MinOpenFiles || l.OpenFiles > MaxOpenFiles) {
		out = append(out, fmt.Sprintf("open_files %d is out of range; expected %d to %d", l.OpenFiles, MinOpenFiles, MaxOpenFiles))
	}
	return out
}

// validReadiness reports whether s is a readiness path: a URL path
// starting with /, without spaces or a fragment.
func validReadiness(s string) bool {
	return strings.HasPrefix(s, "/") && !strings.ContainsAny(s, " \t\r\n#")
}

// commandProblem says why an argv is not acceptable, or "".
func commandProblem(argv []string) string {
	switch {
	case len(argv) == 0:
		return "the command is empty; give the program and its arguments, like [node, index.js]"
	case len(argv) > MaxCommandArgs:
		return fmt.Sprintf("the command has %d arguments, more than %d", len(argv), MaxCommandArgs)
	case argv[0] == "":
		return "the command's program is empty"
	}
	for _, a := range argv {
		if strings.ContainsRune(a, 0) {
			return "a command argument contains a NUL byte"
		}
	}
	return ""
}
