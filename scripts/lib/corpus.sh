# shellcheck shell=bash
# A large real-text app for the benchmarks: crate sources copied from the local cargo
# registry, pass after pass, until the tree reaches a size and a file count. Only what a
# bundle may hold is kept: regular files and directories, nothing that looks like a secret
# (the bundler refuses those), no nested git metadata. Sourced, never executed.

# Copies one crate directory into a destination directory, filtered as above.
corpus_copy_crate() { # crate-dir destination
    cp -R -- "$1" "$2/"
    find "$2/${1##*/}" \( -type l -o -name '.env' -o -name '.env.*' -o -name '*.pem' \
        -o -name '*.key' -o -name '*.p12' -o -name '*.pfx' -o -name '*.jks' \
        -o -name '*.keystore' -o -name 'id_rsa*' -o -name 'id_dsa*' -o -name 'id_ecdsa*' \
        -o -name 'id_ed25519*' -o -name '.netrc' -o -name '.npmrc' -o -name '.pypirc' \
        -o -name '*.tfstate' -o -name '*.tfstate.*' -o -name 'credentials.json' \
        -o -name '.gitignore' -o -name '.git' -o -name '.gitattributes' \) -prune -exec rm -rf -- {} +
    chmod -R u+rwX,go+rX,go-w,ug-s -- "$2/${1##*/}"
}

# Fills <dest>/vendor until it holds >= min_mb MB and >= min_files files; prints
# "<bytes> <files>" of the result on stdout, progress on stderr.
corpus_build() { # dest min_mb min_files source_dir
    local dest=$1 min_mb=$2 min_files=$3 source_dir=$4
    local -a crates
    local -A crate_bytes=()
    local size path bytes=0 files=0 pass=0 out c
    mapfile -t crates < <(find "$source_dir" -mindepth 2 -maxdepth 2 -type d | sort)
    if ((${#crates[@]} == 0)); then
        printf 'corpus: no crate directories under %s\n' "$source_dir" >&2
        return 1
    fi
    while read -r size path; do crate_bytes[$path]=$size; done < <(du -sb -- "${crates[@]}")
    while ((bytes < min_mb * 1000000 || files < min_files)); do
        pass=$((pass + 1))
        if ((pass > 20)); then
            printf 'corpus: %s is too small to reach %s MB / %s files\n' "$source_dir" "$min_mb" "$min_files" >&2
            return 1
        fi
        out=$dest/vendor/copy$pass
        mkdir -p -- "$out"
        for c in "${crates[@]}"; do
            corpus_copy_crate "$c" "$out"
            bytes=$((bytes + crate_bytes[$c]))
            # A later pass stops once the size is reached (files are counted for real below).
            ((pass > 1 && bytes >= min_mb * 1000000)) && break
        done
        read -r bytes _ < <(du -sb -- "$dest/vendor")
        files=$(find "$dest/vendor" -type f | wc -l)
        printf 'corpus: pass %s: %s MB in %s files\n' "$pass" "$((bytes / 1000000))" "$files" >&2
    done
    printf '%s %s\n' "$bytes" "$files"
}
