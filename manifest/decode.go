package manifest

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decoder walks the YAML node tree by hand instead of unmarshalling into
// structs: that is what lets every error carry a line and column, lets one
// pass report all problems, and keeps YAML's looser conversions (an integer
// where a string belongs) from slipping through as silent defaults.
type decoder struct {
	file     string
	builtins []string
	errs     Errors
}

// field is one key a mapping accepts.
type field struct {
	name     string
	required bool
	decode   func(val *yaml.Node)
}

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	pos := Position{File: d.file}
	if n != nil {
		pos.Line, pos.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, &Error{Pos: pos, Field: path, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) document(data []byte) *Manifest {
	if len(bytes.TrimSpace(data)) == 0 {
		d.errorf(nil, "", "the file is empty; expected a mapping with the keys version and functions")
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		d.syntaxError(err)
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		d.errorf(&extra, "", "a manifest is a single YAML document; remove the second one (after ---)")
	case !errors.Is(err, io.EOF):
		d.syntaxError(err)
		return nil
	}
	root := deref(&doc)
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			d.errorf(root, "", "the document is empty; expected a mapping with the keys version and functions")
			return nil
		}
		root = deref(root.Content[0])
	}

	m := &Manifest{File: d.file}
	var functionsNode *yaml.Node
	d.mapping(root, "", []field{
		{name: "version", required: true, decode: func(v *yaml.Node) {
			n, ok := d.integer(v, "version")
			if !ok {
				return
			}
			if n != SchemaVersion {
				d.errorf(v, "version", "unsupported schema version %d; this build reads version %d", n, SchemaVersion)
				return
			}
			m.Version = n
		}},
		{name: "functions", required: true, decode: func(v *yaml.Node) {
			functionsNode = v
			m.Functions = d.functions(v)
		}},
	})
	if functionsNode != nil && functionsNode.Kind == yaml.MappingNode && len(functionsNode.Content) == 0 {
		d.errorf(functionsNode, "functions", "no functions are declared; declare at least one")
	}
	return m
}

// yamlLineRE pulls the line out of go-yaml's syntax errors, which carry no
// column ("yaml: line 7: mapping values are not allowed in this context").
var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (d *decoder) syntaxError(err error) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		d.errs = append(d.errs, &Error{Pos: Position{File: d.file, Line: line}, Msg: "invalid YAML: " + m[2]})
		return
	}
	d.errs = append(d.errs, &Error{Pos: Position{File: d.file}, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")})
}

func (d *decoder) functions(n *yaml.Node) []Function {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "functions", "expected a mapping from function name to definition, got %s", describe(n))
		return nil
	}
	var fns []Function
	d.pairs(n, "functions", func(key, val *yaml.Node) {
		path := "functions." + key.Value
		if !nameRE.MatchString(key.Value) {
			d.errorf(key, path, "invalid function name %q: use 1 to 63 lowercase letters, digits and dashes, starting with a letter and not ending with a dash", key.Value)
		}
		fn := d.function(val, path)
		fn.Name = key.Value
		fn.Pos = Position{File: d.file, Line: key.Line, Column: key.Column}
		fns = append(fns, fn)
	})
	return fns
}

func (d *decoder) function(n *yaml.Node, path string) Function {
	fn := Function{Timeout: DefaultTimeout, Concurrency: DefaultConcurrency}
	var permsNode *yaml.Node
	processNodes := map[string]*yaml.Node{}
	d.mapping(n, path, []field{
		{name: "description", decode: func(v *yaml.Node) {
			s, ok := d.str(v, path+".description")
			if ok && len(s) > maxDescription {
				d.errorf(v, path+".description", "too long (%d bytes); keep it under %d", len(s), maxDescription)
			}
			fn.Description = s
		}},
		{name: "handler", required: true, decode: func(v *yaml.Node) {
			fn.Handler = d.handler(v, path+".handler")
		}},
		{name: "timeout", decode: func(v *yaml.Node) {
			if t, ok := d.duration(v, path+".timeout"); ok {
				if t <= 0 || t > MaxTimeout {
					d.errorf(v, path+".timeout", "%s is out of range; expected more than 0s and at most %s", t, MaxTimeout)
					return
				}
				fn.Timeout = t
			}
		}},
		{name: "concurrency", decode: func(v *yaml.Node) {
			if c, ok := d.integer(v, path+".concurrency"); ok {
				if c < 1 || c > MaxConcurrency {
					d.errorf(v, path+".concurrency", "%d is out of range; expected 1 to %d invocations at once per runner", c, MaxConcurrency)
					return
				}
				fn.Concurrency = c
			}
		}},
		{name: "public", decode: func(v *yaml.Node) {
			fn.Public, _ = d.boolean(v, path+".public")
		}},
		{name: "permissions", decode: func(v *yaml.Node) {
			permsNode = v
			fn.Permissions = d.permissions(v, path+".permissions")
		}},
		{name: "async", decode: func(v *yaml.Node) {
			fn.Async = d.async(v, path+".async")
		}},
		{name: "source", decode: func(v *yaml.Node) {
			processNodes["source"] = v
			fn.Process.Source = d.source(v, path+".source")
		}},
		{name: "build", decode: func(v *yaml.Node) {
			processNodes["build"] = v
			fn.Process.Build = d.command(v, path+".build")
		}},
		{name: "env", decode: func(v *yaml.Node) {
			processNodes["env"] = v
			fn.Process.Env = d.env(v, path+".env")
		}},
		{name: "secrets", decode: func(v *yaml.Node) {
			processNodes["secrets"] = v
			fn.Process.Secrets = d.secrets(v, path+".secrets")
		}},
		{name: "workdir", decode: func(v *yaml.Node) {
			processNodes["workdir"] = v
			if s, ok := d.str(v, path+".workdir"); ok {
				if p := workdirProblem(s); p != "" {
					d.errorf(v, path+".workdir", "%s", p)
					return
				}
				fn.Process.Workdir = filepath.ToSlash(filepath.Clean(s))
			}
		}},
		{name: "limits", decode: func(v *yaml.Node) {
			processNodes["limits"] = v
			fn.Process.Limits = d.limits(v, path+".limits")
		}},
	})
	if fn.Public && len(fn.Permissions) > 0 {
		d.errorf(permsNode, path+".permissions", "a public function cannot require permissions; remove public: true or the permissions")
	}
	d.processFields(n, path, fn, processNodes)
	return fn
}

// processFields checks that the settings of functions run as processes
// are given exactly to those: a source for http and exec handlers, and
// none of them for a built-in.
func (d *decoder) processFields(n *yaml.Node, path string, fn Function, nodes map[string]*yaml.Node) {
	if n.Kind != yaml.MappingNode {
		return
	}
	switch {
	case fn.Handler.RunsProcess():
		if _, ok := nodes["source"]; !ok {
			d.errorf(n, path+".source", "missing required key: an %s handler runs the code in a source directory, which shoal deploy uploads", fn.Handler.Kind())
		}
		for _, k := range slices.Sorted(maps.Keys(fn.Process.Secrets)) {
			if _, dup := fn.Process.Env[k]; dup {
				d.errorf(nodes["secrets"], path+".secrets", "%s is set in both env and secrets; keep one", k)
			}
		}
		if len(fn.Process.Env)+len(fn.Process.Secrets) > MaxEnv {
			d.errorf(cmp.Or(nodes["env"], nodes["secrets"]), path+".env", "%d variables in env and secrets, more than %d", len(fn.Process.Env)+len(fn.Process.Secrets), MaxEnv)
		}
	case fn.Handler.Builtin != "":
		for _, k := range slices.Sorted(maps.Keys(nodes)) {
			d.errorf(nodes[k], path+"."+k, "only http and exec handlers take %s; a built-in runs inside the runner", k)
		}
	}
}

// source resolves a source directory relative to the manifest's own
// directory and checks that it is one.
func (d *decoder) source(n *yaml.Node, path string) string {
	s, ok := d.str(n, path)
	if !ok {
		return ""
	}
	if s == "" {
		d.errorf(n, path, "empty; give the directory holding the function's code, relative to this file")
		return ""
	}
	dir := s
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(filepath.Dir(d.file), dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		d.errorf(n, path, "cannot resolve %q: %v", s, err)
		return ""
	}
	st, err := os.Stat(abs)
	switch {
	case err != nil:
		d.errorf(n, path, "the source directory %s cannot be read: %v", abs, errors.Unwrap(err))
		return ""
	case !st.IsDir():
		d.errorf(n, path, "%s is not a directory", abs)
		return ""
	}
	return abs
}

// command decodes an argv list.
func (d *decoder) command(n *yaml.Node, path string) []string {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "expected a list: the program and its arguments, like [node, index.js], got %s", describe(n))
		return nil
	}
	argv := make([]string, 0, len(n.Content))
	for _, item := range n.Content {
		item = deref(item)
		if a, ok := d.str(item, path); ok {
			argv = append(argv, a)
		}
	}
	if len(argv) == len(n.Content) {
		if p := commandProblem(argv); p != "" {
			d.errorf(n, path, "%s", p)
		}
	}
	return argv
}

// stringMap decodes a mapping of names to strings, checking each name
// with problem and each value with valueProblem.
func (d *decoder) stringMap(n *yaml.Node, path string, problem, valueProblem func(string) string) map[string]string {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping of names to strings, got %s", describe(n))
		return nil
	}
	out := map[string]string{}
	d.pairs(n, path, func(key, val *yaml.Node) {
		p := join(path, key.Value)
		if msg := problem(key.Value); msg != "" {
			d.errorf(key, p, "%s", msg)
			return
		}
		v, ok := d.str(val, p)
		if !ok {
			return
		}
		if msg := valueProblem(v); msg != "" {
			d.errorf(val, p, "%s", msg)
			return
		}
		out[key.Value] = v
	})
	return out
}

func (d *decoder) env(n *yaml.Node, path string) map[string]string {
	return d.stringMap(n, path, envNameProblem, func(v string) string {
		if strings.ContainsRune(v, 0) {
			return "the value contains a NUL byte"
		}
		return ""
	})
}

func (d *decoder) secrets(n *yaml.Node, path string) map[string]string {
	return d.stringMap(n, path, envNameProblem, func(v string) string {
		if !ValidSecretName(v) {
			return fmt.Sprintf("invalid secret name %q: use 1 to 128 lowercase letters, digits and . _ -, starting and ending with a letter or digit (the value itself goes in with shoal secret set)", v)
		}
		return ""
	})
}

func (d *decoder) limits(n *yaml.Node, path string) Limits {
	var l Limits
	d.mapping(n, path, []field{
		{name: "memory", decode: func(v *yaml.Node) {
			var s string
			switch {
			case v.Kind == yaml.ScalarNode && v.Tag == "!!int":
				s = v.Value
			default:
				var ok bool
				if s, ok = d.str(v, path+".memory"); !ok {
					return
				}
			}
			m, err := ParseMemory(s)
			if err != nil {
				d.errorf(v, path+".memory", "%v", err)
				return
			}
			if m < MinMemory {
				d.errorf(v, path+".memory", "%s is below the minimum of %s", s, FormatMemory(MinMemory))
				return
			}
			l.Memory = m
		}},
		{name: "cpu", decode: func(v *yaml.Node) {
			var c float64
			if v.Kind != yaml.ScalarNode || (v.Tag != "!!int" && v.Tag != "!!float") || v.Decode(&c) != nil {
				d.errorf(v, path+".cpu", "expected a number of cores, like 0.5 or 2, got %s", describe(v))
				return
			}
			if c <= 0 || c > MaxCPU {
				d.errorf(v, path+".cpu", "%s is out of range; expected more than 0 and at most %d cores", v.Value, MaxCPU)
				return
			}
			l.CPU = c
		}},
		{name: "open_files", decode: func(v *yaml.Node) {
			if c, ok := d.integer(v, path+".open_files"); ok {
				if c < MinOpenFiles || c > MaxOpenFiles {
					d.errorf(v, path+".open_files", "%d is out of range; expected %d to %d", c, MinOpenFiles, MaxOpenFiles)
					return
				}
				l.OpenFiles = uint64(c)
			}
		}},
	})
	return l
}

func (d *decoder) async(n *yaml.Node, path string) Async {
	var a Async
	d.mapping(n, path, []field{
		{name: "enabled", decode: func(v *yaml.Node) {
			enabled, ok := d.boolean(v, path+".enabled")
			a.Disabled = ok && !enabled
		}},
		{name: "max_deliver", decode: func(v *yaml.Node) {
			if c, ok := d.integer(v, path+".max_deliver"); ok {
				if c < 1 || c > MaxMaxDeliver {
					d.errorf(v, path+".max_deliver", "%d is out of range; expected 1 to %d attempts", c, MaxMaxDeliver)
					return
				}
				a.MaxDeliver = c
			}
		}},
		{name: "backoff", decode: func(v *yaml.Node) {
			a.Backoff = d.backoff(v, path+".backoff")
		}},
	})
	return a
}

func (d *decoder) backoff(n *yaml.Node, path string) []time.Duration {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "expected a list of durations, like [10s, 1m], got %s", describe(n))
		return nil
	}
	if len(n.Content) > MaxBackoffSteps {
		d.errorf(n, path, "%d delays; list at most %d (the last one repeats)", len(n.Content), MaxBackoffSteps)
		return nil
	}
	out := make([]time.Duration, 0, len(n.Content))
	for _, item := range n.Content {
		item = deref(item)
		t, ok := d.duration(item, path)
		if !ok {
			continue
		}
		if t < 0 || t > MaxBackoff {
			d.errorf(item, path, "%s is out of range; expected 0s to %s", t, MaxBackoff)
			continue
		}
		out = append(out, t)
	}
	return out
}

// handlerKinds lists the keys of the handler mapping, one per handler kind.
var handlerKinds = []string{"builtin", "http", "exec"}

func (d *decoder) handler(n *yaml.Node, path string) Handler {
	var h Handler
	set := 0
	d.mapping(n, path, []field{
		{name: "builtin", decode: func(v *yaml.Node) {
			set++
			name, ok := d.str(v, path+".builtin")
			if !ok {
				return
			}
			if !slices.Contains(d.builtins, name) {
				d.errorf(v, path+".builtin", "unknown built-in function %q; this build has: %s", name, strings.Join(sorted(d.builtins), ", "))
				return
			}
			h.Builtin = name
		}},
		{name: "http", decode: func(v *yaml.Node) {
			set++
			h.HTTP = d.httpHandler(v, path+".http")
		}},
		{name: "exec", decode: func(v *yaml.Node) {
			set++
			e := &ExecHandler{}
			d.mapping(v, path+".exec", []field{
				{name: "command", required: true, decode: func(v *yaml.Node) {
					e.Command = d.command(v, path+".exec.command")
				}},
			})
			h.Exec = e
		}},
	})
	if n.Kind == yaml.MappingNode && set != 1 {
		d.errorf(n, path, "set exactly one handler kind, one of: %s", strings.Join(handlerKinds, ", "))
	}
	return h
}

func (d *decoder) httpHandler(n *yaml.Node, path string) *HTTPHandler {
	h := &HTTPHandler{Listen: ListenPort, StartTimeout: DefaultStartTimeout}
	d.mapping(n, path, []field{
		{name: "command", required: true, decode: func(v *yaml.Node) {
			h.Command = d.command(v, path+".command")
		}},
		{name: "listen", decode: func(v *yaml.Node) {
			if s, ok := d.str(v, path+".listen"); ok {
				if s != ListenPort && s != ListenUnix {
					d.errorf(v, path+".listen", "unknown %q; expected port (the server listens on $PORT) or unix (on the socket $SHOAL_SOCKET)", s)
					return
				}
				h.Listen = s
			}
		}},
		{name: "readiness", decode: func(v *yaml.Node) {
			if s, ok := d.str(v, path+".readiness"); ok {
				if !validReadiness(s) {
					d.errorf(v, path+".readiness", "%q is not a URL path; expected one starting with /, like /healthz", s)
					return
				}
				h.Readiness = s
			}
		}},
		{name: "processes", decode: func(v *yaml.Node) {
			if s, ok := d.str(v, path+".processes"); ok {
				switch s {
				case "shared":
				case "per-slot":
					h.PerSlot = true
				default:
					d.errorf(v, path+".processes", "unknown %q; expected shared (one process takes every invocation) or per-slot (one invocation at a time per process)", s)
				}
			}
		}},
		{name: "start_timeout", decode: func(v *yaml.Node) {
			if t, ok := d.duration(v, path+".start_timeout"); ok {
				if t <= 0 || t > MaxStartTimeout {
					d.errorf(v, path+".start_timeout", "%s is out of range; expected more than 0s and at most %s", t, MaxStartTimeout)
					return
				}
				h.StartTimeout = t
			}
		}},
	})
	return h
}

func (d *decoder) permissions(n *yaml.Node, path string) []string {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "expected a list of permission names, got %s", describe(n))
		return nil
	}
	perms := make([]string, 0, len(n.Content))
	seen := map[string]bool{}
	for _, item := range n.Content {
		item = deref(item)
		p, ok := d.str(item, path)
		if !ok {
			continue
		}
		switch {
		case !ValidPermission(p):
			d.errorf(item, path, "invalid permission %q: use 1 to %d letters, digits and . _ : / -", p, MaxPermission)
		case seen[p]:
			d.errorf(item, path, "permission %q is listed twice", p)
		default:
			seen[p] = true
			perms = append(perms, p)
		}
	}
	return perms
}

// mapping decodes a mapping node: each key must be one of fields, appear
// once, and required fields must be present.
func (d *decoder) mapping(n *yaml.Node, path string, fields []field) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	present := map[string]bool{}
	d.pairs(n, path, func(key, val *yaml.Node) {
		i := slices.IndexFunc(fields, func(f field) bool { return f.name == key.Value })
		if i < 0 {
			d.errorf(key, join(path, key.Value), "unknown key%s; expected one of: %s", suggest(key.Value, fields), fieldNames(fields))
			return
		}
		present[key.Value] = true
		fields[i].decode(val)
	})
	for _, f := range fields {
		if f.required && !present[f.name] {
			d.errorf(n, join(path, f.name), "missing required key")
		}
	}
}

// pairs calls fn for each key/value of a mapping, rejecting non-string keys,
// merge keys and duplicates. Values have aliases resolved.
func (d *decoder) pairs(n *yaml.Node, path string, fn func(key, val *yaml.Node)) {
	first := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := deref(n.Content[i]), deref(n.Content[i+1])
		if key.Kind != yaml.ScalarNode || key.Tag != "!!str" {
			if key.Tag == "!!merge" {
				d.errorf(key, path, "merge keys (<<) are not supported; write the keys out")
				continue
			}
			d.errorf(key, path, "keys must be strings, got %s", describe(key))
			continue
		}
		if prev, dup := first[key.Value]; dup {
			d.errorf(key, join(path, key.Value), "duplicate key; first defined at line %d", prev.Line)
			continue
		}
		first[key.Value] = key
		fn(key, val)
	}
}

func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		d.errorf(n, path, "expected a string, got %s (quote it if it is meant as text)", describe(n))
		return "", false
	}
	return n.Value, true
}

func (d *decoder) integer(n *yaml.Node, path string) (int, bool) {
	var v int
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		d.errorf(n, path, "expected an integer, got %s", describe(n))
		return 0, false
	}
	return v, true
}

func (d *decoder) boolean(n *yaml.Node, path string) (bool, bool) {
	var v bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&v) != nil {
		d.errorf(n, path, "expected true or false, got %s", describe(n))
		return false, false
	}
	return v, true
}

func (d *decoder) duration(n *yaml.Node, path string) (time.Duration, bool) {
	if n.Kind == yaml.ScalarNode && (n.Tag == "!!int" || n.Tag == "!!float") {
		d.errorf(n, path, "expected a duration with a unit, like %ss or 1m30s; got the bare number %s", n.Value, n.Value)
		return 0, false
	}
	s, ok := d.str(n, path)
	if !ok {
		return 0, false
	}
	t, err := time.ParseDuration(s)
	if err != nil {
		d.errorf(n, path, "invalid duration %q; expected a number with a unit (ms, s, m, h), like 30s or 1m30s", s)
		return 0, false
	}
	return t, true
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "nothing (null)"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int":
			return "the integer " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return fmt.Sprintf("%q (%s)", n.Value, strings.TrimPrefix(n.Tag, "!!"))
	}
	return "an unexpected YAML node"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func fieldNames(fields []field) string {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}

// suggest offers the closest known key for a likely typo.
func suggest(key string, fields []field) string {
	best, bestDist := "", 3
	for _, f := range fields {
		if d := editDistance(strings.ToLower(key), f.name); d < bestDist {
			best, bestDist = f.name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
