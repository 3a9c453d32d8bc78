package manifest

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Position is a place in a manifest file. Line and Column start at 1; a
// zero Column means the column is unknown.
type Position struct {
	File   string
	Line   int
	Column int
}

// String formats the position as file:line:col, the form editors jump to.
func (p Position) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Column == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	default:
		return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
	}
}

// Error is one problem in a manifest.
type Error struct {
	Pos Position
	// Field is the dotted path of the offending key, e.g.
	// functions.ping.timeout; empty for problems with the whole file.
	Field string
	Msg   string
}

// Error formats the problem as "file:line:col: field: message".
func (e *Error) Error() string {
	if e.Field == "" {
		return e.Pos.String() + ": " + e.Msg
	}
	return e.Pos.String() + ": " + e.Field + ": " + e.Msg
}

// Errors is every problem found in one manifest, in file order.
type Errors []*Error

// Error lists the problems one per line.
func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

func (es Errors) sort() {
	slices.SortStableFunc(es, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(a.Pos.Line, b.Pos.Line), cmp.Compare(a.Pos.Column, b.Pos.Column))
	})
}
