package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// manifestPlan is how `shoal new` will add a function to fn.yaml, worked
// out before anything is written.
//
// The file is edited as text, never re-encoded, so its comments, order and
// layout stay as they are: the entry is appended at the end of the file,
// which puts it under functions only when functions is the last top-level
// key (or missing, or the file has no content yet). Every append is
// checked by parsing the result: it must read as the old file plus the
// new function and nothing else. When it would not, the file is left
// alone and the entry is printed for the user to place (manual).
type manifestPlan struct {
	file   string
	create bool   // the file does not exist: write text as a new file
	text   string // what to write or append; "" with manual
	manual string // why the entry cannot be appended, if it cannot
	entry  string // the entry as the user would add it, under functions:
}

// manifestHeader starts a manifest that `shoal new` creates.
const manifestHeader = `# fn.yaml: the functions this Shoal deployment serves.
# Schema reference: docs/fn-yaml.md
`

// planManifest plans adding the function name, in language l with its
// code in source, to the manifest file. It fails if the file cannot be
// read or parsed, or already declares name.
func planManifest(file, name string, l language, source string) (manifestPlan, error) {
	p := manifestPlan{file: file, entry: renderEntry(name, l, source, 2, 2)}
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		p.create = true
		p.text = manifestHeader + "version: 1\nfunctions:\n" + p.entry
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("read manifest: %w", err)
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return p, fmt.Errorf("%s: invalid YAML (%s): fix it, or give another manifest with -f", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var second yaml.Node
	if err := dec.Decode(&second); err == nil {
		p.manual = "it holds more than one YAML document"
		return p, nil
	}

	var add string
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	switch {
	case root.Kind == 0 || root.Kind == yaml.DocumentNode:
		// Nothing but comments or blank lines so far.
		add = "version: 1\nfunctions:\n" + p.entry
	case root.Kind != yaml.MappingNode:
		return p, fmt.Errorf("%s:%d:%d: expected a mapping with the keys version and functions, got a %s", file, root.Line, root.Column, kindName(root.Kind))
	default:
		fnKey, fnVal, last := lookupKey(root, "functions")
		if fnVal != nil && fnVal.Kind == yaml.MappingNode {
			if k, _, _ := lookupKey(fnVal, name); k != nil {
				return p, fmt.Errorf("%s:%d:%d: the function %s is already declared; choose another name, or remove it from the manifest first", file, k.Line, k.Column, name)
			}
		}
		switch {
		case root.Style&yaml.FlowStyle != 0:
			p.manual = "its top-level mapping is written in flow style ({...})"
			return p, nil
		case fnKey == nil:
			indent := strings.Repeat(" ", root.Column-1)
			add = indent + "functions:\n" + renderEntry(name, l, source, root.Column-1+2, 2)
		case !last:
			p.manual = fmt.Sprintf("functions (line %d) is not its last top-level key, so the end of the file is not inside it", fnKey.Line)
			return p, nil
		case fnVal.Kind == yaml.MappingNode && fnVal.Style&yaml.FlowStyle != 0:
			p.manual = fmt.Sprintf("functions (line %d) is written in flow style ({...})", fnKey.Line)
			return p, nil
		case fnVal.Kind == yaml.MappingNode && len(fnVal.Content) > 0:
			// Follow the file's own indentation.
			first := fnVal.Content[0]
			step := first.Column - fnKey.Column
			if step <= 0 {
				step = 2
			}
			add = renderEntry(name, l, source, first.Column-1, step)
		default:
			// functions: with nothing under it yet (or something that is
			// not a mapping, which the check below turns away).
			add = renderEntry(name, l, source, fnKey.Column-1+2, 2)
		}
	}
	if len(data) > 0 && !bytes.HasSuffix(data, []byte("\n")) {
		add = "\n" + add
	}
	if bytes.Contains(data, []byte("\r\n")) {
		add = strings.ReplaceAll(add, "\n", "\r\n")
	}
	if reason := checkAppend(data, add, name, p.entry); reason != "" {
		p.manual = reason
		return p, nil
	}
	p.text = add
	return p, nil
}

// apply writes the plan: a new file, or the append to the existing one.
func (p manifestPlan) apply() error {
	switch {
	case p.manual != "":
		return nil
	case p.create:
		f, err := os.OpenFile(p.file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("create manifest: %w", err)
		}
		if _, err := f.WriteString(p.text); err != nil {
			f.Close()
			return fmt.Errorf("write manifest %s: %w", p.file, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("write manifest %s: %w", p.file, err)
		}
		return nil
	}
	f, err := os.OpenFile(p.file, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open manifest: %w", err)
	}
	if _, err := f.WriteString(p.text); err != nil {
		f.Close()
		return fmt.Errorf("append to manifest %s: %w", p.file, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("append to manifest %s: %w", p.file, err)
	}
	return nil
}

// checkAppend returns why appending add to data would not add exactly the
// function entry (entry, as rendered under functions:) to the manifest,
// or "" if it would.
func checkAppend(data []byte, add, name, entry string) string {
	var before, after, want map[string]any
	if err := yaml.Unmarshal(data, &before); err != nil {
		return "it cannot be read as a mapping: " + err.Error()
	}
	if err := yaml.Unmarshal(append(bytes.Clone(data), add...), &after); err != nil {
		return "appending the entry would not parse: " + err.Error()
	}
	if err := yaml.Unmarshal([]byte("functions:\n"+entry), &want); err != nil {
		return "the entry does not parse: " + err.Error() // a programming error, caught by the tests
	}
	if before == nil {
		before = map[string]any{"version": 1}
	}
	fns, _ := before["functions"].(map[string]any)
	if fns == nil && before["functions"] != nil {
		return "its functions key is not a mapping"
	}
	if fns == nil {
		fns = map[string]any{}
	}
	fns[name] = want["functions"].(map[string]any)[name]
	before["functions"] = fns
	if !reflect.DeepEqual(before, after) {
		return "appending the entry at the end of the file would not put it under functions"
	}
	return ""
}

// lookupKey finds key in mapping m: its key and value nodes, and whether it
// is the mapping's last key.
func lookupKey(m *yaml.Node, key string) (k, v *yaml.Node, last bool) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i], m.Content[i+1], i+2 == len(m.Content)
		}
	}
	return nil, nil, false
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "scalar"
	case yaml.AliasNode:
		return "alias"
	}
	return "document"
}

// renderEntry renders the fn.yaml entry of a function: its name indented
// by indent spaces, each level below it by step more.
func renderEntry(name string, l language, source string, indent, step int) string {
	var b strings.Builder
	line := func(level int, s string) {
		b.WriteString(strings.Repeat(" ", indent+level*step))
		b.WriteString(s)
		b.WriteByte('\n')
	}
	line(0, name+":")
	line(1, "source: "+yamlScalar(source))
	if l.build != nil {
		line(1, "build: "+yamlFlowList(l.build(name)))
	}
	line(1, "handler:")
	line(2, l.kind+":")
	line(3, "command: "+yamlFlowList(l.command(name)))
	if l.readiness != "" {
		line(3, "readiness: "+yamlScalar(l.readiness))
	}
	return b.String()
}

// plainSafeRE matches strings that may be written unquoted in a flow list
// (no indicators, spaces or separators), provided YAML reads them back as
// the same string (see yamlScalar).
var plainSafeRE = regexp.MustCompile(`^[A-Za-z0-9_./][A-Za-z0-9_./-]*$|^-[A-Za-z0-9_./-]+$`)

// yamlScalar writes s as a YAML string: plain when that reads back as the
// same string (go, ./hello, --omit=dev), double-quoted otherwise ("1.0",
// "true", "my dir").
func yamlScalar(s string) string {
	if plainSafeRE.MatchString(s) {
		var v any
		if err := yaml.Unmarshal([]byte(s), &v); err == nil && v == s {
			return s
		}
	}
	return strconv.Quote(s)
}

func yamlFlowList(items []string) string {
	quoted := make([]string, len(items))
	for i, s := range items {
		quoted[i] = yamlScalar(s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}
