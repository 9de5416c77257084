"""The in-repo test data is complete: every file of its manifest is present and unchanged, none is unlisted."""

import hashlib

import testdata


def _manifest() -> dict[str, str]:
    lines = testdata.path("MANIFEST.sha256").read_text(encoding="utf-8").splitlines()
    return {name.removeprefix("./"): digest for digest, name in (line.split(maxsplit=1) for line in lines)}


def test_every_manifest_file_is_present_with_its_hash():
    manifest = _manifest()
    assert len(manifest) > 100
    for name, digest in manifest.items():
        assert hashlib.sha256(testdata.path(name).read_bytes()).hexdigest() == digest, name


def test_no_test_data_file_is_unlisted():
    on_disk = {str(p.relative_to(testdata.DATA)) for p in testdata.DATA.rglob("*") if p.is_file()}
    assert on_disk - {"MANIFEST.sha256", "README.md"} == set(_manifest())


def test_the_readme_names_every_folder_of_the_test_data():
    readme = testdata.path("README.md").read_text(encoding="utf-8")
    folders = {name.split("/")[0] for name in _manifest() if "/" in name}
    for folder in folders:
        assert f"`{folder}/" in readme, folder
