package cloud

import (
	"encoding/json"
	"testing"
)

// FuzzLegacyFast: whatever the fast path accepts, encoding/json decodes to
// the same image text and name; and on the usual messages it does accept.
func FuzzLegacyFast(f *testing.F) {
	for _, s := range []string{
		`{"image": "aGVsbG8=", "image_metadata": {"image_name": "a.jpg"}}`,
		`{"image_metadata":{"image_name":"b/c.jpg","camera":"x"},"image":"aGk=","extra":[1,{"a":null}]}`,
		` {"image":"aGk=","image_metadata":{"image_name":"d"}} `,
		`{"image":"a\/b","image_metadata":{"image_name":"e"}}`,
		`{"Image":"aGk=","image_metadata":{"image_name":"f"}}`,
		`{"image":"aGk=","image":"b3RoZXI=","image_metadata":{"image_name":"g"}}`,
		`{"image":"aGk=","image_metadata":{"image_name":"h"}}x`,
		`{"image":"aGk=","image_metadata":null}`,
		`{"image":null,"image_metadata":{"image_name":"i"}}`,
		"{\"image\":\"a\x01b\",\"image_metadata\":{\"image_name\":\"j\"}}",
		`{"image":"aGk=","image_metadata":{"image_name":"k\u00e9"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		img, name, ok := legacyFast(body)
		if !ok {
			return
		}
		var m legacyMessage
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("fast path accepted what encoding/json refuses: %v", err)
		}
		if m.Image == nil || m.ImageMetadata == nil || m.ImageMetadata.ImageName == nil {
			t.Fatalf("fast path found fields encoding/json does not")
		}
		if *m.Image != string(img) || *m.ImageMetadata.ImageName != name {
			t.Fatalf("fast path: %q %q; encoding/json: %q %q", img, name, *m.Image, *m.ImageMetadata.ImageName)
		}
	})
}

// TestLegacyFastTakesTheUsualMessage: the message old devices send (as
// Python's json.dumps writes it, with or without spaces, in either key
// order) takes the fast path.
func TestLegacyFastTakesTheUsualMessage(t *testing.T) {
	for _, s := range []string{
		`{"image": "aGVsbG8=", "image_metadata": {"image_name": "a.jpg"}}`,
		`{"image_metadata":{"image_name":"a.jpg"},"image":"aGVsbG8="}`,
	} {
		img, name, ok := legacyFast([]byte(s))
		if !ok || string(img) != "aGVsbG8=" || name != "a.jpg" {
			t.Errorf("%s: %q %q %v", s, img, name, ok)
		}
	}
}
