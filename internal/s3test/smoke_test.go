package s3test_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/forestwatch/forest/internal/s3test"
)

func TestMain(m *testing.M) { s3test.Main(m) }

// TestSmokeS3 proves the harness S3 server is real: one object put with a
// SHA-256 checksum and read back with its checksum.
func TestSmokeS3(t *testing.T) {
	srv := s3test.Shared(t)
	bucket := srv.Bucket(t)
	c := srv.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := []byte("a frame of forest")
	sum := sha256.Sum256(body)
	want := base64.StdEncoding.EncodeToString(sum[:])
	_, err := c.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("smoke/one.txt"), Body: bytes.NewReader(body),
		ChecksumAlgorithm: types.ChecksumAlgorithmSha256, ChecksumSHA256: aws.String(want),
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("smoke/one.txt"), ChecksumMode: types.ChecksumModeEnabled,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Body.Close()
	got, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("got %q", got)
	}
	if aws.ToString(out.ChecksumSHA256) != want {
		t.Fatalf("checksum %q, want %q", aws.ToString(out.ChecksumSHA256), want)
	}
}

// TestConditionalPut checks that the server honours If-None-Match: *, which
// forest-cloud relies on for idempotent writes.
func TestConditionalPut(t *testing.T) {
	srv := s3test.Shared(t)
	bucket := srv.Bucket(t)
	c := srv.Client()
	ctx := context.Background()
	put := func() error {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String(bucket), Key: aws.String("once"), Body: bytes.NewReader([]byte("x")),
			IfNoneMatch: aws.String("*"),
		})
		return err
	}
	if err := put(); err != nil {
		t.Fatal(err)
	}
	if err := put(); err == nil {
		t.Fatal("second conditional put succeeded; want 412 Precondition Failed")
	}
}

func TestStopStart(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	c := srv.Client()
	ctx := context.Background()
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("k"), Body: bytes.NewReader([]byte("v"))}); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.HeadObject(short, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("k")}); err == nil {
		t.Fatal("stopped server answered")
	}
	srv.Start(t)
	if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("k")}); err != nil {
		t.Fatal(err)
	}
}
