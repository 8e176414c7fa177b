package s3test_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/forestwatch/forest/internal/s3test"
)

func TestMain(m *testing.M) { s3test.Main(m) }

// kinds are the implementations every test here runs against: the S3
// behaviour forest-cloud relies on must not be one server's quirk.
var kinds = []s3test.Kind{s3test.VersityGW, s3test.MinIO}

func status(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// TestS3Semantics proves, on each server, what forest-cloud relies on: a
// PUT with a SHA-256 checksum is stored and read back with it; a PUT whose
// checksum does not match its body is refused; If-None-Match: * refuses a
// second write of a key with 412.
func TestS3Semantics(t *testing.T) {
	for _, k := range kinds {
		t.Run(string(k), func(t *testing.T) {
			srv := s3test.StartKind(t, k)
			bucket := srv.Bucket(t)
			c := srv.Client()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			body := []byte("a frame of forest")
			sum := sha256.Sum256(body)
			want := base64.StdEncoding.EncodeToString(sum[:])
			put := func(key string, b []byte, checksum string, ifNoneMatch bool) error {
				in := &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(b),
					ChecksumAlgorithm: types.ChecksumAlgorithmSha256, ChecksumSHA256: aws.String(checksum)}
				if ifNoneMatch {
					in.IfNoneMatch = aws.String("*")
				}
				_, err := c.PutObject(ctx, in)
				return err
			}
			if err := put("smoke/one.txt", body, want, true); err != nil {
				t.Fatal(err)
			}
			out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("smoke/one.txt"), ChecksumMode: types.ChecksumModeEnabled})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(out.Body)
			out.Body.Close()
			if err != nil || !bytes.Equal(got, body) || aws.ToString(out.ChecksumSHA256) != want {
				t.Fatalf("read back %q checksum %q (%v), want %q", got, aws.ToString(out.ChecksumSHA256), err, want)
			}
			if err := put("smoke/one.txt", body, want, true); status(err) != http.StatusPreconditionFailed {
				t.Errorf("second conditional put: %v (status %d), want 412", err, status(err))
			}
			if err := put("smoke/bad.txt", []byte("other bytes"), want, true); err == nil {
				t.Error("a put whose checksum does not match its body was stored")
			}
			if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("smoke/bad.txt")}); err == nil {
				t.Error("the refused object exists")
			}
		})
	}
}

// TestStopStartPause: a stopped server refuses, a paused one hangs, and
// each comes back with its data.
func TestStopStartPause(t *testing.T) {
	for _, k := range kinds {
		t.Run(string(k), func(t *testing.T) {
			srv := s3test.StartKind(t, k)
			bucket := srv.Bucket(t)
			c := srv.Client()
			ctx := context.Background()
			if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("k"), Body: bytes.NewReader([]byte("v"))}); err != nil {
				t.Fatal(err)
			}
			head := func(d time.Duration) error {
				short, cancel := context.WithTimeout(ctx, d)
				defer cancel()
				_, err := c.HeadObject(short, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("k")})
				return err
			}
			srv.Stop(t)
			if err := head(2 * time.Second); err == nil {
				t.Fatal("stopped server answered")
			}
			srv.Start(t)
			if err := head(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			srv.Pause(t)
			t0 := time.Now()
			if err := head(time.Second); err == nil || time.Since(t0) < 900*time.Millisecond {
				t.Fatalf("paused server answered (%v after %s)", err, time.Since(t0))
			}
			srv.Resume(t)
			if err := head(30 * time.Second); err != nil {
				t.Fatal(err)
			}
		})
	}
}
