"""Reads a DIRAC TokenDB with DIRAC's own TokenDB class (DIRAC 9.1.22's server venv, which has
MySQLdb), as DIRAC's TokenManager would after `export-dirac-tokendb`.

Usage: ``python tokendb_read.py FIXTURE.json``, the fixture being
``{"db": {"host", "port", "user", "password", "name"}, "pairs": [[user_id, provider], ...]}``.
Prints one JSON object:

* ``tokens``: for each pair, ``"<user_id> <provider>"`` -> what ``getTokenForUserProvider`` returns
  (the token dictionary, or null when DIRAC finds no live token);
* ``rows_by_user``: for each user ID, how many rows ``getTokensByUserID`` returns;
* ``show_create``: ``SHOW CREATE TABLE Token`` without its AUTO_INCREMENT counter. ``TokenDB()``
  creates the table when it is missing, so on an empty database this is DIRAC's own DDL.

DIRAC's configuration (only ``/Systems/Framework/Databases/TokenDB``) is written to a directory
beside the fixture, removed at exit.
"""
import atexit
import json
import os
import re
import shutil
import sys
import tempfile


def main(fixture_path):
    with open(fixture_path) as f:
        fx = json.load(f)
    db = fx["db"]
    root = tempfile.mkdtemp(prefix="tm-dirac-tokendb-", dir=os.path.dirname(os.path.abspath(fixture_path)))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    os.makedirs(f"{root}/etc")
    with open(f"{root}/etc/dirac.cfg", "w") as f:
        f.write(
            "DIRAC\n{\n  Setup = None\n}\n"
            "Systems\n{\n  Framework\n  {\n    Databases\n    {\n      TokenDB\n      {\n"
            f"        Host = {db['host']}\n        Port = {db['port']}\n        User = {db['user']}\n"
            f"        Password = {db['password']}\n        DBName = {db['name']}\n"
            "      }\n    }\n  }\n}\n"
        )
    for var in ("DIRACSYSCONFIG", "X509_USER_PROXY"):
        os.environ.pop(var, None)
    os.environ["DIRAC_ROOT_PATH"] = root

    import DIRAC

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        DIRAC.initialize(require_auth=False)  # docs/DIRAC.md#no-configuration-server
    finally:
        sys.argv = argv
    from sqlalchemy import text
    from DIRAC.FrameworkSystem.DB.TokenDB import TokenDB

    tokendb = TokenDB()
    result = {"tokens": {}, "rows_by_user": {}}
    for user_id, provider in fx["pairs"]:
        got = tokendb.getTokenForUserProvider(user_id, provider)
        if not got["OK"]:
            raise SystemExit(f"getTokenForUserProvider({user_id}, {provider}): {got['Message']}")
        result["tokens"][f"{user_id} {provider}"] = dict(got["Value"]) if got["Value"] else None
        rows = tokendb.getTokensByUserID(user_id)
        if not rows["OK"]:
            raise SystemExit(f"getTokensByUserID({user_id}): {rows['Message']}")
        result["rows_by_user"][user_id] = len(rows["Value"])
    session = tokendb.session()
    ddl = session.execute(text("SHOW CREATE TABLE `Token`")).fetchone()[1]
    session.close()
    result["show_create"] = re.sub(r" AUTO_INCREMENT=\d+", "", ddl)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
