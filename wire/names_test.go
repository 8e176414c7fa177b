package wire_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/wire"
)

func TestFrameID(t *testing.T) {
	for _, c := range []struct {
		dev  string
		seq  uint64
		want string
	}{{"mast-01", 42, "mast-01-000000000042"}, {"d", 0, "d-000000000000"}, {"d", 1234567890123, "d-1234567890123"}} {
		if got := wire.FrameID(c.dev, c.seq); got != c.want || !wire.ValidID(got) {
			t.Errorf("FrameID(%q, %d) = %q, want %q", c.dev, c.seq, got, c.want)
		}
	}
}

func TestSanitiseName(t *testing.T) {
	ok := []string{"a.png", "site 1/IMG_0001.JPG", "Floresta/árvore-2.jpg", "x(1)+y=z@w,v:u~.png"}
	for _, n := range ok {
		if got, err := wire.SanitiseName(n); err != nil || got != n {
			t.Errorf("%q: %q %v", n, got, err)
		}
	}
	bad := []string{"", "/abs", "..", "a/../b", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "a\nb", "a\u202eb",
		"\xff\xfe", strings.Repeat("a", 257), "a?b", "a#b", "a%2e%2e", " lead", "trail /x", "a..b", "1/2/3/4/5/6/7/8/9", "a*"}
	for _, n := range bad {
		if _, err := wire.SanitiseName(n); !errors.Is(err, wire.ErrUnsafeName) {
			t.Errorf("%q accepted: %v", n, err)
		}
	}
}

// FuzzSanitiseName: an accepted name is valid UTF-8, bounded, relative, has
// no control characters, no "." or ".." segments, and is returned as is.
func FuzzSanitiseName(f *testing.F) {
	for _, s := range []string{"a.png", "../x", "/x", "a/b/c.jpg", "a\x00", "é/ü.png", "a//b", "....", ". /x", "a\u2028b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		got, err := wire.SanitiseName(name)
		if err != nil {
			if !errors.Is(err, wire.ErrUnsafeName) {
				t.Fatalf("error %v", err)
			}
			return
		}
		if got != name || !utf8.ValidString(got) || len(got) > wire.MaxNameBytes || strings.HasPrefix(got, "/") {
			t.Fatalf("accepted %q", got)
		}
		for _, seg := range strings.Split(got, "/") {
			if seg == "" || seg == "." || seg == ".." || strings.Contains(seg, "..") {
				t.Fatalf("accepted %q", got)
			}
		}
		for _, r := range got {
			if r < 0x20 || r == 0x7f || r == '\\' {
				t.Fatalf("accepted %q", got)
			}
		}
		if k, err := cloud.LegacyKey("legacy", got, "png"); err != nil || !strings.HasPrefix(k, "legacy/") || !strings.HasSuffix(k, ".png") {
			t.Fatalf("legacy key %q %v", k, err)
		}
	})
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"DJI_0042.JPG": "DJI_0042.JPG",
		"http://cam.local:8080/snap.jpg?size=full": "http:/cam.local:8080/snap.jpg_size=full",
		"libcamera-still -o -":                     "libcamera-still -o -",
		`C:\DCIM\100MEDIA\DJI_0042.JPG`:            "C:/DCIM/100MEDIA/DJI_0042.JPG",
		"../../etc/passwd":                         "etc/passwd",
		"a/./b//c":                                 "a/b/c",
		"bad\x00name\n.jpg":                        "bad_name_.jpg",
		"\xff\xferaw.png":                          "_raw.png",
		"1/2/3/4/5/6/7/8/9/10.jpg":                 "3/4/5/6/7/8/9/10.jpg",
		"":                                         "",
		"/":                                        "",
		" .. ":                                     "",
		"a...b":                                    "a_.b",
	} {
		if got := wire.CleanName(in); got != want {
			t.Errorf("CleanName(%q) = %q, want %q", in, got, want)
		}
	}
	long := strings.Repeat("d/", 3) + strings.Repeat("x", 300) + ".jpg"
	if got := wire.CleanName(long); len(got) > wire.MaxNameBytes || !strings.HasSuffix(got, "x.jpg") {
		t.Errorf("long name cleaned to %q (%d bytes)", got, len(got))
	}
}

// FuzzCleanName: a cleaned name is empty or accepted by SanitiseName.
func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"a.png", "../x", `a\b`, "http://h/x?y", "a\x00", "é/ü.png", " /x", strings.Repeat("ab/", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		got := wire.CleanName(name)
		if _, err := wire.SanitiseName(got); got != "" && err != nil {
			t.Fatalf("CleanName(%q) = %q, refused: %v", name, got, err)
		}
		if ok, _ := wire.SanitiseName(name); ok != "" && got != name {
			t.Fatalf("a safe name %q was changed to %q", name, got)
		}
	})
}
