package main

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"text/template"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/spf13/cobra"
)

// templates holds one directory per language of `shoal new`: each file is
// a text/template (data: newData) written without its .tmpl suffix. The
// suffix keeps go.mod and *.go templates out of the build (a go.mod would
// make the directory a module that go:embed refuses); all: keeps dotfiles.
//
//go:embed all:templates
var templates embed.FS

// newData is what a template is executed with.
type newData struct {
	Name string
}

// language is what `shoal new` knows of one language: the files come from
// templates/<name>, the rest goes into the function's fn.yaml entry and
// into the hints printed for the user.
type language struct {
	build     func(name string) []string // build argv, nil for none
	kind      string                     // handler kind: "http" or "exec"
	command   func(name string) []string
	readiness string   // http only; "" for the runner's default
	byHand    []string // how to run it outside Shoal, from its directory
}

var languages = map[string]language{
	"go": {
		build:     func(name string) []string { return []string{"go", "build", "-o", name, "."} },
		kind:      "http",
		command:   func(name string) []string { return []string{"./" + name} },
		readiness: "/",
		byHand:    []string{"go build -o NAME . && PORT=8080 ./NAME", "curl localhost:8080/"},
	},
	"python": {
		kind:      "http",
		command:   func(string) []string { return []string{"python3", "main.py"} },
		readiness: "/",
		byHand:    []string{"PORT=8080 python3 main.py", "curl localhost:8080/"},
	},
	"node": {
		kind:      "http",
		command:   func(string) []string { return []string{"node", "index.js"} },
		readiness: "/",
		byHand:    []string{"PORT=8080 node index.js", "curl localhost:8080/"},
	},
	"bash": {
		kind:    "exec",
		command: func(string) []string { return []string{"bash", "handler.sh"} },
		byHand:  []string{"echo hi | SHOAL_METHOD=POST SHOAL_PATH=/ bash handler.sh"},
	},
}

// languageNames lists the languages of `shoal new`, sorted.
func languageNames() []string {
	names := make([]string, 0, len(languages))
	for name := range languages {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// newNewCmd is the scaffolding command. It does not read its flags from
// the environment (no withEnv): SHOAL_FILE or SHOAL_DIR exported for
// another command must not change where it writes.
func newNewCmd() *cobra.Command {
	var lang, dir, file string
	cmd := &cobra.Command{
		Use:   "new NAME --lang " + strings.Join(languageNames(), "|"),
		Short: "Create a function's source directory and add it to fn.yaml",
		Long: `Write a minimal working function in the given language into DIR (default
./NAME) and add its entry to the manifest (-f, default ./fn.yaml), with its
source path relative to the manifest. go, python and node functions are HTTP
servers on 127.0.0.1:$PORT using nothing but their standard library; a bash
function is an exec handler, run once per invocation.

DIR must not exist or be empty. A manifest that does not exist is created; in
one that does, the entry is appended at the end of the file, leaving the rest
of its text and comments as they are, when functions is the file's last
top-level key. Otherwise the file is left alone and the entry is printed for
you to add. A name the manifest already declares is refused.`,
		Example: `  shoal new hello --lang go
  shoal new resize --lang python --dir functions/resize -f fn.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runNew(cmd.OutOrStdout(), args[0], lang, dir, file)
		},
	}
	cmd.Flags().StringVar(&lang, "lang", "", "language of the function: "+strings.Join(languageNames(), ", "))
	cmd.Flags().StringVar(&dir, "dir", "", "directory to create the function in (default ./NAME)")
	cmd.Flags().StringVarP(&file, "file", "f", defaultManifest, "function manifest to add the function to")
	if err := cmd.MarkFlagRequired("lang"); err != nil {
		panic(fmt.Sprintf("shoal new: %v", err)) // a programming error: the flag must exist
	}
	return cmd
}

// runNew checks everything it can before it writes anything: the name,
// the language, the directory and the manifest.
func runNew(out io.Writer, name, lang, dir, file string) error {
	if !manifest.ValidName(name) {
		return fmt.Errorf("invalid function name %q: use 1 to 63 lowercase letters, digits and dashes, starting with a letter and not ending with a dash", name)
	}
	l, ok := languages[lang]
	if !ok {
		return fmt.Errorf("--lang %q: want one of %s", lang, strings.Join(languageNames(), ", "))
	}
	if dir == "" {
		dir = name
	}
	if err := checkEmptyDir(dir); err != nil {
		return err
	}
	source, err := sourcePath(file, dir)
	if err != nil {
		return err
	}
	plan, err := planManifest(file, name, l, source)
	if err != nil {
		return err
	}
	files, err := writeTemplates(dir, lang, newData{Name: name})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "created %s (%s):\n", dir, lang)
	for _, f := range files {
		fmt.Fprintf(out, "  %s\n", f)
	}
	if err := plan.apply(); err != nil {
		return fmt.Errorf("%w; %s was created: add this entry under functions: yourself:\n%s", err, dir, plan.entry)
	}
	switch {
	case plan.create:
		fmt.Fprintf(out, "created %s with the function %s\n", file, name)
	case plan.manual != "":
		fmt.Fprintf(out, "%s: left unchanged: %s; add this entry under functions: yourself:\n%s", file, plan.manual, plan.entry)
	default:
		fmt.Fprintf(out, "added the function %s to %s\n", name, file)
	}
	fmt.Fprintf(out, "run it by hand, in %s:\n", dir)
	for _, line := range l.byHand {
		fmt.Fprintf(out, "  %s\n", strings.ReplaceAll(line, "NAME", name))
	}
	fmt.Fprintf(out, "next steps:\n  shoal deploy -f %s\n  shoal invoke %s    # not public: give it a token (--token or $SHOAL_TOKEN, see shoal token)\n", file, name)
	return nil
}

// checkEmptyDir refuses a dir that exists and is not an empty directory.
func checkEmptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		if fi, serr := os.Stat(dir); serr == nil && !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory; choose another --dir", dir)
		}
		return fmt.Errorf("check %s: %w", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("%s already exists and is not empty; choose another --dir, or remove it", dir)
	}
	return nil
}

// sourcePath is dir as fn.yaml's source key wants it: relative to the
// manifest's directory, with forward slashes.
func sourcePath(file, dir string) (string, error) {
	absFile, err := filepath.Abs(file)
	if err != nil {
		return "", fmt.Errorf("manifest %s: %w", file, err)
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("directory %s: %w", dir, err)
	}
	rel, err := filepath.Rel(filepath.Dir(absFile), absDir)
	if err != nil {
		return "", fmt.Errorf("directory %s relative to manifest %s: %w", dir, file, err)
	}
	return filepath.ToSlash(rel), nil
}

// writeTemplates writes the templates of lang into dir, creating it, and
// returns the paths written. Shell scripts are made executable.
func writeTemplates(dir, lang string, data newData) ([]string, error) {
	root := path.Join("templates", lang)
	var written []string
	err := fs.WalkDir(templates, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		text, err := templates.ReadFile(p)
		if err != nil {
			return err
		}
		tmpl, err := template.New(p).Option("missingkey=error").Parse(string(text))
		if err != nil {
			return fmt.Errorf("template %s: %w", p, err) // a programming error, caught by the tests
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, data); err != nil {
			return fmt.Errorf("template %s: %w", p, err)
		}
		rel := strings.TrimSuffix(strings.TrimPrefix(p, root+"/"), ".tmpl")
		dst := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(dst), err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(rel, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(dst, buf.Bytes(), mode); err != nil {
			return fmt.Errorf("write %s: %w", dst, err)
		}
		written = append(written, dst)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(written) == 0 {
		return nil, fmt.Errorf("no templates for %s", lang) // a programming error, caught by the tests
	}
	return written, nil
}
