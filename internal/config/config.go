// Package config loads the YAML configuration files of forest-agent and
// forest-cloud: one loader, with the same rules for both commands.
//
// Parse decodes YAML text into a struct that already holds the defaults,
// with these rules:
//
//   - Unknown keys are errors. Every error names the field by its dotted
//     path, for example "uplink.confirm_timeout", and matches ErrConfig.
//   - ${NAME} and ${NAME:-default} in scalar values are replaced from the
//     environment after the text is parsed, so comments, keys and the YAML
//     syntax itself are never expanded, and a value that holds "#", ":" or
//     quotes stays one value. ${NAME} takes the variable's value, even an
//     empty one; a variable that is not set is an error naming the field and
//     the variable. ${NAME:-default} takes the default when the variable is
//     unset or empty.
//   - Values are decoded into the field's type: a plain scalar whose
//     expansion reads as a number or a boolean decodes into a number or
//     boolean field.
//
// Parse is a pure function of its input and the environment; it is safe for
// concurrent use.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ErrConfig is matched (errors.Is) by every error Load and Parse return for
// bad configuration text, and by *FieldError.
var ErrConfig = errors.New("invalid configuration")

// FieldError names a configuration field and what is wrong with it.
type FieldError struct {
	// Field is the dotted YAML path, for example "uplink.confirm_timeout".
	Field string
	// Reason says what is wrong, with the value found.
	Reason string
}

// Error returns "field: reason".
func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Is reports whether target is ErrConfig.
func (e *FieldError) Is(target error) bool { return target == ErrConfig }

// Bad returns a *FieldError for field with a formatted reason.
func Bad(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Duration is a time.Duration written as "30s" or "5m" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || n.Kind != yaml.ScalarNode {
		return fmt.Errorf("%q is not a duration like 30s or 5m", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String returns the duration as time.Duration prints it.
func (d Duration) String() string { return time.Duration(d).String() }

// Load reads the file at path, decodes it into dst (see Parse) and then
// calls check, when not nil, to derive what is left and validate. Errors
// name the file.
func Load(path string, dst any, check func() error) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := Parse(raw, dst); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if check != nil {
		if err := check(); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}

// Parse decodes YAML text into dst, a pointer to a struct holding the
// defaults; keys the text leaves out keep them. See the package comment for
// the rules.
func Parse(raw []byte, dst any) error {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		panic("config.Parse: dst must be a pointer to a struct")
	}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(raw)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file: every default stands
		}
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	return errors.Join(expand(root, ""), decode(root, v.Elem(), ""))
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expand replaces environment references in every scalar value under n.
func expand(n *yaml.Node, path string) error {
	var errs []error
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := expand(n.Content[i+1], join(path, n.Content[i].Value)); err != nil {
				errs = append(errs, err)
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if err := expand(c, path+"["+strconv.Itoa(i)+"]"); err != nil {
				errs = append(errs, err)
			}
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "${") {
			return nil
		}
		var missing []string
		n.Value = envRef.ReplaceAllStringFunc(n.Value, func(m string) string {
			sub := envRef.FindStringSubmatch(m)
			v, set := os.LookupEnv(sub[1])
			switch {
			case sub[2] == "" && set:
				return v
			case sub[2] == "":
				missing = append(missing, sub[1])
				return ""
			case v != "":
				return v
			}
			return sub[3]
		})
		for _, name := range missing {
			errs = append(errs, Bad(path, "environment variable %s is not set (line %d); set it, or give a default as ${%s:-value}", name, n.Line, name))
		}
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) == 0 {
			n.Tag = "" // a plain scalar is typed by what it expanded to
		}
	}
	return errors.Join(errs...)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var unmarshaler = reflect.TypeFor[yaml.Unmarshaler]()

// decode decodes n into v, walking structs itself so that every error
// names its field.
func decode(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil // "key:" with no value keeps the default
	}
	t := v.Type()
	if t.Kind() != reflect.Struct || reflect.PointerTo(t).Implements(unmarshaler) {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			return &FieldError{Field: path, Reason: typeReason(t, n, err)}
		}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return Bad(path, "want a mapping of keys (line %d)", n.Line)
	}
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		f, ok := field(t, k.Value)
		if !ok {
			errs = append(errs, Bad(join(path, k.Value), "unknown key (line %d)", k.Line))
			continue
		}
		if err := decode(val, v.FieldByIndex(f.Index), join(path, k.Value)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// field finds the struct field whose yaml tag (or lowercased name) is key.
func field(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if name == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// typeReason words a decoding error for a person.
func typeReason(t reflect.Type, n *yaml.Node, err error) string {
	got := fmt.Sprintf("(got %q, line %d)", n.Value, n.Line)
	if n.Kind != yaml.ScalarNode {
		got = fmt.Sprintf("(line %d)", n.Line)
	}
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "must be a duration like 30s or 5m " + got
	case reflect.PointerTo(t).Implements(unmarshaler):
		return err.Error() + fmt.Sprintf(" (line %d)", n.Line)
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "must be a whole number " + got
	case reflect.Float32, reflect.Float64:
		return "must be a number " + got
	case reflect.Bool:
		return "must be true or false " + got
	case reflect.Slice:
		return "must be a list " + got
	case reflect.Map:
		return "must be a mapping " + got
	case reflect.Pointer:
		return typeReason(t.Elem(), n, err)
	}
	return err.Error()
}
