package wire

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// FrameID returns the frame id of a device's frame: "<device>-<seq as at
// least 12 digits>", the message id and the object name in S3.
func FrameID(device string, seq uint64) string { return fmt.Sprintf("%s-%012d", device, seq) }

// Ext returns the file extension (without the dot) of an image content
// type: jpg, png or webp; "" for any other type.
func Ext(contentType string) string {
	switch contentType {
	case JPEG:
		return "jpg"
	case PNG:
		return "png"
	case WebP:
		return "webp"
	}
	return ""
}

// ErrUnsafeName means a name cannot be used in an object key.
var ErrUnsafeName = errors.New("unsafe object name")

// MaxNameBytes bounds a sanitised name.
const MaxNameBytes = 256

// maxNameDepth bounds the number of path segments in a name.
const maxNameDepth = 8

// SanitiseName checks a client-supplied name (a legacy image name, a
// capture's file name) for use in an S3 key and returns
// it unchanged, or an error matching ErrUnsafeName saying why it is refused.
// It refuses empty names, names over MaxNameBytes, invalid UTF-8, control
// and format characters, a leading "/", backslashes, empty, "." and ".."
// segments, more than 8 segments, and characters outside letters, digits,
// marks and " ._-+=@,:()~". The result is therefore a relative, normalised
// path that cannot escape the prefix it is joined to.
func SanitiseName(name string) (string, error) {
	refuse := func(why string) (string, error) {
		return "", fmt.Errorf("name %q: %s: %w", truncate(name, 80), why, ErrUnsafeName)
	}
	switch {
	case name == "":
		return refuse("empty")
	case len(name) > MaxNameBytes:
		return refuse(fmt.Sprintf("longer than %d bytes", MaxNameBytes))
	case !utf8.ValidString(name):
		return refuse("not valid UTF-8")
	case strings.HasPrefix(name, "/"):
		return refuse("leading /")
	}
	for _, r := range name {
		switch {
		case r == '/':
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError:
			return refuse("control character")
		case r == '\\':
			return refuse("backslash")
		case unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r):
		case strings.ContainsRune(" ._-+=@,:()~", r):
		default:
			return refuse(fmt.Sprintf("character %q not allowed", r))
		}
	}
	segs := strings.Split(name, "/")
	if len(segs) > maxNameDepth {
		return refuse(fmt.Sprintf("more than %d path segments", maxNameDepth))
	}
	for _, s := range segs {
		switch {
		case s == "":
			return refuse("empty path segment")
		case s == "." || s == "..":
			return refuse("relative path segment")
		case strings.TrimSpace(s) != s:
			return refuse("segment starts or ends with a space")
		case strings.Contains(s, ".."):
			return refuse("contains ..")
		}
	}
	return name, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func validName(s string) bool {
	_, err := SanitiseName(s)
	return err == nil
}

// CleanName turns any name (a file name, a camera URL, a command line) into
// one that SanitiseName accepts, or "" when nothing usable is left:
// characters SanitiseName refuses become "_", backslashes separate segments
// like "/", empty, "." and ".." segments go, and of a long name the end
// (the file name) is kept: at most 8 segments and MaxNameBytes bytes.
func CleanName(name string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(name, "_") {
		switch {
		case r == '/' || r == '\\':
			b.WriteByte('/')
		case unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r) || strings.ContainsRune(" ._-+=@,:()~", r):
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	var segs []string
	for _, s := range strings.Split(b.String(), "/") {
		s = strings.TrimSpace(s)
		if s == "" || s == "." || s == ".." {
			continue
		}
		for strings.Contains(s, "..") {
			s = strings.ReplaceAll(s, "..", "_")
		}
		segs = append(segs, s)
	}
	segs = segs[max(0, len(segs)-maxNameDepth):]
	out := strings.Join(segs, "/")
	for len(out) > MaxNameBytes {
		_, size := utf8.DecodeRuneInString(out)
		out = strings.TrimLeft(strings.TrimSpace(out[size:]), "/")
	}
	if !validName(out) {
		return "" // a space before a "/" left by the cut; never seen in practice
	}
	return out
}
