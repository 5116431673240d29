"""moe-scope: `streamlit run app.py` from a checkout. The script itself is dashboard/app.py (the installed
`moe-scope` command runs that file)."""
from dashboard.app import main

main()
