"""The Streamlit script: page config, session state, the pages. `streamlit run app.py` (the checkout) and
`moe-scope` (an installed copy) both run this file."""
import streamlit as st


def main() -> None:
    st.set_page_config(page_title="moe-scope", page_icon="🔀", layout="wide")
    from dashboard import routes, state  # after set_page_config

    state.init()
    all_pages = routes.pages()
    current = st.navigation(list(all_pages.values()))
    routes.follow_view_link(all_pages)
    current.run()


if __name__ == "__main__":  # streamlit runs this file as __main__
    main()
